import multiprocessing as mp
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensordict import TensorDict

from cortexmem.llm import (
    Fingerprint,
    SessionConflictError,
    SessionMismatchError,
    SessionNotFoundError,
    SessionStore,
    attach_memory,
)

from .helpers import open_gates, small_memory, tiny_base

ROOT = Path(__file__).resolve().parents[2]
FP = Fingerprint("base-a", "adapter-a")


def _state(value: float, batch: int = 1) -> TensorDict:
    return TensorDict({"layer_0": TensorDict({"S": torch.full((batch, 2, 4, 4), value),
                                              "conv": torch.full((batch, 3, 8), value)}, batch_size=[batch])},
                      batch_size=[batch])


def test_roundtrip_list_delete_export(tmp_path):
    store = SessionStore(tmp_path / "sessions.db")
    info = store.save("user@1", _state(1.5), fingerprint=FP, tokens_seen=42, meta={"note": "x"})
    assert info.version == 1 and info.tokens_seen == 42 and info.meta == {"note": "x"}
    st, info2 = store.load("user@1", fingerprint=FP)
    assert torch.equal(st["layer_0", "S"], torch.full((1, 2, 4, 4), 1.5)) and info2.version == 1
    store.save("other", _state(2.0, batch=2), fingerprint=FP, tokens_seen=1)
    assert {i.session_id for i in store.list()} == {"user@1", "other"}
    path = store.export("user@1", tmp_path / "exp.safetensors")
    assert store.delete("user@1") and not store.delete("user@1")
    with pytest.raises(SessionNotFoundError):
        store.load("user@1")
    store.import_file(path)
    assert store.info("user@1").tokens_seen == 42
    # ids are plain names (core.paths.safe_name): SQL or path syntax is refused before it reaches either
    for evil in ("x'); DROP TABLE sessions; --", "../x", "/etc/passwd", "a\x00b"):
        with pytest.raises(ValueError, match="session_id"):
            store.save(evil, _state(0.0), fingerprint=FP, tokens_seen=0)
    assert store.exists("other")
    with pytest.raises(ValueError, match="session_id"):
        store.save("", _state(0.0), fingerprint=FP, tokens_seen=0)
    with pytest.raises(TypeError, match="session_id"):
        store.info(3)


def test_files_are_private(tmp_path):
    store = SessionStore(tmp_path / "s.db")
    store.save("a", _state(1.0), fingerprint=FP, tokens_seen=1)
    blobs = list(store.blob_dir.iterdir())
    assert len(blobs) == 1
    for p in [store.path, *blobs]:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
    assert stat.S_IMODE(os.stat(store.blob_dir).st_mode) == 0o700
    store.save("a", _state(2.0), fingerprint=FP, tokens_seen=2)
    assert len(list(store.blob_dir.iterdir())) == 1  # the old blob is gone after the swap


def test_fingerprint_and_version_checks(tmp_path):
    store = SessionStore(tmp_path / "s.db")
    store.save("a", _state(1.0), fingerprint=FP, tokens_seen=1)
    with pytest.raises(SessionMismatchError, match="different base model"):
        store.load("a", fingerprint=Fingerprint("base-b", "adapter-a"))
    with pytest.raises(SessionMismatchError, match="different memory adapter"):
        store.load("a", fingerprint=Fingerprint("base-a", "adapter-b"))
    with pytest.raises(SessionConflictError):
        store.save("a", _state(3.0), fingerprint=FP, tokens_seen=2, expected_version=0)
    store.save("a", _state(3.0), fingerprint=FP, tokens_seen=2, expected_version=1)


def test_loading_a_session_into_another_model_is_an_error(tmp_path):
    mlm = attach_memory(tiny_base("qwen2"), small_memory(8), sessions=tmp_path / "s.db")
    mlm.ingest(torch.randint(3, 96, (1, 12)), session_id="a")
    other = attach_memory(tiny_base("qwen2", seed=3), small_memory(8), sessions=tmp_path / "s.db")
    with pytest.raises(SessionMismatchError, match="different base model"):
        other.ingest(torch.randint(3, 96, (1, 12)), session_id="a")
    open_gates(mlm, 0.1)  # retrained adapter: old sessions no longer fit
    with pytest.raises(SessionMismatchError, match="memory adapter"):
        mlm.ingest(torch.randint(3, 96, (1, 12)), session_id="a")
    mlm.ingest(torch.randint(3, 96, (1, 12)), session_id="a", reset_session=True)


def _writer(path: str, wid: int, n: int) -> None:
    torch.set_num_threads(1)
    store = SessionStore(path)
    for i in range(n):
        value = float(wid * 1000 + i)
        # shared ids collide across writers; each state's content says who wrote it
        store.save(f"shared-{i % 3}", _state(value), fingerprint=FP, tokens_seen=int(value))
        store.save(f"own-{wid}", _state(value), fingerprint=FP, tokens_seen=int(value))
        st, info = store.load(f"shared-{i % 3}")
        assert float(st["layer_0", "S"].flatten()[0]) == info.tokens_seen


def test_concurrent_writers_do_not_corrupt(tmp_path):
    path = str(tmp_path / "s.db")
    SessionStore(path)
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 10)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    store = SessionStore(path)
    infos = {i.session_id: i for i in store.list()}
    assert set(infos) == {"shared-0", "shared-1", "shared-2", "own-0", "own-1", "own-2", "own-3"}
    for sid, info in infos.items():
        st, _ = store.load(sid)
        # content and row agree (no torn or mixed writes)
        assert torch.all(st["layer_0", "S"] == info.tokens_seen)
        assert torch.all(st["layer_0", "conv"] == info.tokens_seen)
    for w in range(4):
        assert infos[f"own-{w}"].tokens_seen == w * 1000 + 9 and infos[f"own-{w}"].version == 10
    assert sum(i.version for sid, i in infos.items() if sid.startswith("shared")) == 40
    assert len(list(store.blob_dir.iterdir())) == len(infos)


def test_session_survives_process_restart(tmp_path):
    """Ingest in one process, continue in another: same tokens and state as one uninterrupted run."""
    store = str(tmp_path / "s.db")
    paths = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [str(ROOT / "src")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(ROOT)])}
    for part in ("1", "2"):
        subprocess.run([sys.executable, "-m", "tests.llm.session_proc", store, part, str(tmp_path / f"p{part}.st")],
                       check=True, cwd=ROOT, env=env, timeout=120)
    got = load_file(str(tmp_path / "p2.st"))
    mlm = attach_memory(tiny_base("qwen2"), small_memory(8))
    open_gates(mlm, 1.0)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 96, (1, 40), generator=g)
    st = mlm.ingest(ids[:, :24])
    seq = mlm.generate(ids[:, 24:], state=st, max_new_tokens=5, do_sample=False)
    assert torch.equal(got["seq"], seq)
    info = SessionStore(store).info("conv")
    assert info.tokens_seen == 24 + 16 + 5 and info.version == 2
    stored = {k[len("state."):]: v for k, v in got.items() if k.startswith("state.")}
    # reference: first 24 tokens in chunks of 8, then generate ingests the prompt's first chunk and runs
    # its last chunk plus the 5 new tokens as one window
    ref = mlm.ingest(seq[:, :8], state=mlm.ingest(ids[:, :24]))
    ref = mlm._advance(seq[:, 8:], ref).flatten_keys(".")
    assert set(stored) == set(ref.keys())
    for k in ref.keys():
        torch.testing.assert_close(stored[k], ref[k], rtol=1e-4, atol=1e-5)
