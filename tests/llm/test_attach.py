import pytest
import torch
from transformers.generation.streamers import BaseStreamer

from cortexmem.llm import MemoryConfig, MemoryLM, attach_memory, find_decoder_layers

from .helpers import open_gates, small_memory, tiny_base

ARCHS = ["qwen2", "llama", "gpt2"]


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_base_at_init(arch):
    base = tiny_base(arch)
    ids = torch.randint(3, 96, (2, 21))
    with torch.no_grad():
        per_chunk = torch.cat([base(ids[:, s:s + 8]).logits for s in range(0, 21, 8)], dim=1)
        whole = base(ids[:, :8]).logits
    mlm = attach_memory(base, small_memory(8))
    with torch.no_grad():
        out = mlm(ids)
        short = mlm(ids[:, :8])
    # the zero gate makes the sidecar an exact no-op: bitwise equal, chunk by chunk
    assert torch.equal(out.logits, per_chunk)
    assert torch.equal(short.logits, whole)


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_layers_found_generically(arch):
    base = tiny_base(arch)
    path, layers = find_decoder_layers(base)
    assert len(layers) == 2 and path.endswith(("layers", "h"))


def test_base_frozen_not_copied_and_gets_no_grad():
    base = tiny_base("qwen2")
    ptrs = {n: p.data_ptr() for n, p in base.named_parameters()}
    mlm = attach_memory(base, small_memory(8))
    assert mlm.base is base
    assert {n: p.data_ptr() for n, p in mlm.base.named_parameters()} == ptrs
    ids = torch.randint(3, 96, (2, 20))
    mlm(ids, labels=ids, checkpoint=True).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in base.parameters())
    grads = [p.grad for p in mlm.memory_parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    names = {n for n, _ in mlm.named_parameters() if _.requires_grad}
    assert names and all(n.startswith("memory.") for n in names)


def test_attach_twice_is_an_error_and_detach_restores():
    base = tiny_base("llama")
    mlm = attach_memory(base, small_memory(8))
    with pytest.raises(ValueError, match="already has a memory sidecar"):
        attach_memory(base, small_memory(8))
    open_gates(mlm)
    ids = torch.randint(3, 96, (1, 8))
    ref = base(ids).logits  # hooks are inactive outside MemoryLM calls
    assert not torch.equal(mlm(ids).logits, ref)
    mlm.detach()
    attach_memory(base, small_memory(8))


def test_gradient_reaches_the_writing_chunk():
    """Loss on the last chunk only; the state entering chunk 0 must receive gradient (BPTT across chunks)."""
    mlm = attach_memory(tiny_base("qwen2"), small_memory(8))
    open_gates(mlm)
    ids = torch.randint(3, 96, (2, 24))
    labels = torch.full_like(ids, -100)
    labels[:, 20:] = ids[:, 20:]
    grads = {}
    for ckpt, bptt in [(False, None), (True, None), (True, 1)]:
        st = mlm.init_state(2).apply(lambda t: t.clone().requires_grad_(True))
        leaves = list(st.flatten_keys(".").values())
        mlm(ids, labels=labels, state=st, checkpoint=ckpt, bptt_chunks=bptt, return_logits=False).loss.backward()
        grads[(ckpt, bptt)] = [None if t.grad is None else t.grad.clone() for t in leaves]
    full = grads[(False, None)]
    assert any(g is not None and g.abs().sum() > 0 for g in full)
    # checkpointing recomputes, it does not change the gradient
    for a, b in zip(full, grads[(True, None)], strict=True):
        torch.testing.assert_close(a, b)
    # truncation after every chunk cuts the path from the first chunk to the loss
    assert all(g is None or g.abs().sum() == 0 for g in grads[(True, 1)])


def test_targets_are_shifted_across_chunk_boundaries():
    mlm = attach_memory(tiny_base("gpt2"), small_memory(8))
    ids = torch.randint(3, 96, (1, 16))
    labels = torch.full_like(ids, -100)
    labels[0, 8] = ids[0, 8]  # first token of chunk 2: predicted by the last position of chunk 1
    out = mlm(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[0, 7:8], ids[0, 8:9])
    assert out.num_label_tokens == 1
    torch.testing.assert_close(out.loss, expected)


def test_state_size_independent_of_length():
    mlm = attach_memory(tiny_base("llama"), small_memory(8))
    sizes = []
    for n in (5, 64, 300):
        st = mlm.ingest(torch.randint(3, 96, (1, n)))
        sizes.append(sum(t.numel() for t in st.flatten_keys(".").values()))
    assert sizes[0] == sizes[1] == sizes[2] == sum(t.numel() for t in mlm.init_state(1).flatten_keys(".").values())


def test_ingest_matches_forward_state():
    mlm = attach_memory(tiny_base("qwen2"), small_memory(8))
    open_gates(mlm)
    ids = torch.randint(3, 96, (2, 29))
    with torch.no_grad():
        a = mlm.ingest(ids).flatten_keys(".")
        b = mlm(ids).memory_state.flatten_keys(".")
    for k in b.keys():
        torch.testing.assert_close(a[k], b[k])


class _Collect(BaseStreamer):
    def __init__(self):
        self.chunks = []

    def put(self, value):
        self.chunks.append(value.clone())

    def end(self):
        self.chunks.append(None)


def test_generate_greedy_matches_forward_and_updates_session(tmp_path):
    mlm = attach_memory(tiny_base("qwen2"), small_memory(64), sessions=tmp_path / "s.db")
    open_gates(mlm, 2.0)
    ids = torch.randint(3, 96, (1, 10))
    streamer = _Collect()
    seq = mlm.generate(ids, session_id="chat", max_new_tokens=6, do_sample=False, streamer=streamer)
    assert seq.shape == (1, 16) and torch.equal(seq[:, :10], ids)
    assert streamer.chunks[-1] is None and len(streamer.chunks) == 1 + 6 + 1
    # greedy continuation = argmax of the memory model's own forward (memory read inside the hooks)
    with torch.no_grad():
        logits = mlm(seq[:, :-1]).logits
    assert torch.equal(logits.argmax(-1)[0, 9:], seq[0, 10:])
    info = mlm.sessions.info("chat")
    assert info.tokens_seen == 16
    stored = mlm.session_state("chat").flatten_keys(".")
    ref = mlm(seq).memory_state.flatten_keys(".")
    for k in ref.keys():
        torch.testing.assert_close(stored[k], ref[k], rtol=1e-4, atol=1e-5)


def test_generate_sampling_and_long_prompt(tmp_path):
    mlm = attach_memory(tiny_base("llama"), small_memory(8), sessions=tmp_path / "s.db")
    open_gates(mlm, 2.0)
    ids = torch.randint(3, 96, (1, 21))
    torch.manual_seed(0)
    out = mlm.generate(ids, session_id="s", max_new_tokens=4, do_sample=True, top_k=10,
                       return_dict_in_generate=True)
    assert out.sequences.shape == (1, 25) and torch.equal(out.sequences[:, :21], ids)
    assert mlm.sessions.info("s").tokens_seen == 25
    # a prompt longer than chunk_size is ingested chunk by chunk: greedy = argmax of the chunked forward
    seq = mlm.generate(ids, state=mlm.init_state(1), max_new_tokens=1, do_sample=False)
    with torch.no_grad():
        assert seq[0, -1] == mlm(ids).logits[0, -1].argmax()
    # continuing the session keeps going; reset_session starts fresh
    mlm.generate(ids[:, :3], session_id="s", max_new_tokens=2, do_sample=False)
    assert mlm.sessions.info("s").tokens_seen == 30
    mlm.generate(ids[:, :3], session_id="s", reset_session=True, max_new_tokens=2, do_sample=False)
    assert mlm.sessions.info("s").tokens_seen == 5
    with pytest.raises(ValueError, match="beam"):
        mlm.generate(ids, num_beams=2, max_new_tokens=2)


def test_save_memory_roundtrip(tmp_path):
    base = tiny_base("gpt2")
    mlm = attach_memory(base, small_memory(8))
    open_gates(mlm, 0.3)
    mlm.save_memory(tmp_path / "ad")
    files = sorted(p.name for p in (tmp_path / "ad").iterdir())
    assert files == ["memory.safetensors", "memory_config.json"]
    mlm.detach()
    other = attach_memory(base, small_memory(8)).load_memory(tmp_path / "ad")
    assert torch.equal(other.memory.adapters["0"].gate, torch.full((32,), 0.3))
    other.detach()
    with pytest.raises(ValueError, match="different base model"):
        attach_memory(tiny_base("gpt2", seed=1), small_memory(8)).load_memory(tmp_path / "ad")


def test_bad_inputs():
    mlm = attach_memory(tiny_base("qwen2"), small_memory(8))
    with pytest.raises(TypeError, match="integer"):
        mlm(torch.randn(1, 4))
    with pytest.raises(ValueError, match="labels must have the shape"):
        mlm(torch.ones(1, 4, dtype=torch.long), labels=torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="memory_mode"):
        mlm(torch.ones(1, 4, dtype=torch.long), memory_mode="bogus")
    with pytest.raises(ValueError, match="tokenizer"):
        mlm.ingest("hello")
    with pytest.raises(TypeError, match="MemoryConfig"):
        MemoryLM(tiny_base("qwen2"), {"chunk_size": 3})
    with pytest.raises(ValueError, match="out of range"):
        attach_memory(tiny_base("qwen2"), small_memory(8, layers=[5]))
    assert MemoryConfig(layers=[-1]).resolve_layers(4) == [3]


def test_default_memory_is_the_niah_recipe_and_presets_name_the_others():
    from cortexmem import GatedDeltaCellConfig, HybridCellConfig
    from cortexmem.llm.config import PRESETS

    default = MemoryConfig()
    assert default == MemoryConfig.preset("niah")
    assert (default.read_from, default.induction_init, default.zero_init, default.layers) == (
        "embeddings", True, "up", [-1])
    assert (default.alpha_max, default.decay_init, default.write_init, default.gate_context) == (1.0, 1e-6, 0.05, 16)
    assert isinstance(default.cell_config(), GatedDeltaCellConfig) and default.cell_config().conv_kernel_size == 16
    assert set(PRESETS) == {"niah", "hybrid", "residual"}
    cell = MemoryConfig.preset("hybrid").cell_config()
    assert isinstance(cell, HybridCellConfig)
    assert (cell.alpha_max, cell.rank, cell.compressor, cell.hidden_size) == (0.99, 32, "linear", 128)
    assert isinstance(MemoryConfig.preset("residual").cell_config(), GatedDeltaCellConfig)
    with pytest.raises(ValueError, match="unknown MemoryConfig preset 'nope'"):
        MemoryConfig.preset("nope")
    with pytest.raises(ValueError, match="induction_init needs the plain gated-delta cell"):
        MemoryConfig(use_hybrid=True)
    cfg = MemoryConfig.preset("hybrid", chunk_size=8, num_heads=2, head_dim=8, window=4, memory_chunk=8,
                              rank_fast=4)
    base = tiny_base("gpt2")
    ids = torch.randint(3, 96, (2, 8))
    with torch.no_grad():
        ref = base(ids).logits
    mlm = attach_memory(base, cfg)
    with torch.no_grad():
        assert torch.equal(mlm(ids).logits, ref)
    open_gates(mlm)
    sizes = {sum(t.numel() for t in mlm.ingest(torch.randint(3, 96, (1, n))).flatten_keys(".").values())
             for n in (3, 40)}
    assert len(sizes) == 1
    assert mlm.generate(ids[:1], max_new_tokens=3, do_sample=False).shape == (1, 11)


@pytest.mark.parametrize("arch", ARCHS)
def test_read_from_embeddings(arch):
    """``read_from="embeddings"``: logits equal the base at init; the memory input is the token embedding."""
    base = tiny_base(arch)
    ids = torch.randint(3, 96, (2, 21))
    with torch.no_grad():
        ref = torch.cat([base(ids[:, s:s + 8]).logits for s in range(0, 21, 8)], dim=1)
    mlm = attach_memory(base, small_memory(8, read_from="embeddings", layers=[1]))
    with torch.no_grad():
        assert torch.equal(mlm(ids).logits, ref)
    adapter = mlm.memory.adapters["1"]
    seen = []
    handle = adapter.down.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        mlm(ids[:, :8])
    handle.remove()
    emb = base.get_input_embeddings()(ids[:, :8])
    torch.testing.assert_close(seen[0], adapter.norm(emb))
    # gradient reaches the write path through the embeddings read, and ingest agrees with forward
    open_gates(mlm)
    labels = torch.full_like(ids, -100)
    labels[:, 20:] = ids[:, 20:]
    mlm(ids, labels=labels, return_logits=False).loss.backward()
    assert adapter.cell.k_proj.weight.grad.abs().sum() > 0 and base.get_input_embeddings().weight.grad is None
    with torch.no_grad():
        a, b = mlm.ingest(ids).flatten_keys("."), mlm(ids).memory_state.flatten_keys(".")
    for k in b.keys():
        torch.testing.assert_close(a[k], b[k])


def test_induction_init_shifts_keys_one_token_behind_queries():
    mlm = attach_memory(tiny_base("llama"), small_memory(8, conv_kernel=5, induction_init=True, layers=[1]))
    cell = mlm.memory.adapters["1"].cell
    x = torch.randn(2, 13, cell.q_proj.weight.shape[1])
    with torch.no_grad():
        q, k, v, _ = cell.qkv(x, cell.init_state(2)["conv"], None)
        v_alone = torch.nn.functional.silu(cell.v_proj(x)).view_as(v)
    # the key written at t is the query of t - 1: a query ending in a context seen before finds its continuation
    torch.testing.assert_close(k[:, 1:], q[:, :-1])
    torch.testing.assert_close(v, v_alone)
    # no key is the zero vector at the start of a stream (its normalisation would have a 1e12 gradient)
    open_gates(mlm)
    ids = torch.randint(3, 96, (2, 24))
    labels = torch.full_like(ids, -100)
    labels[:, 20:] = ids[:, 20:]
    mlm(ids, labels=labels, return_logits=False).loss.backward()
    assert 0 < cell.conv_weight.grad.norm() < 1e3
    with pytest.raises(ValueError, match="induction_init"):
        attach_memory(tiny_base("llama"), small_memory(8, compressor="linear", use_hybrid=False, rank_fast=4,
                                                       induction_init=True))


def test_zero_init_up_keeps_logits_and_trains_the_readout_first():
    base = tiny_base("qwen2")
    ids = torch.randint(3, 96, (2, 16))
    with torch.no_grad():
        ref = torch.cat([base(ids[:, s:s + 8]).logits for s in range(0, 16, 8)], dim=1)
    mlm = attach_memory(base, small_memory(8, zero_init="up", layers=[1]))
    adapter = mlm.memory.adapters["1"]
    assert torch.equal(adapter.gate, torch.ones_like(adapter.gate)) and not adapter.up.weight.any()
    out = mlm(ids, labels=ids)
    assert torch.equal(out.logits, ref)
    out.loss.backward()
    # the zero read-out gets gradient at once; the gate and everything upstream start once `up` has moved
    assert adapter.up.weight.grad.abs().sum() > 0 and not adapter.gate.grad.any()
