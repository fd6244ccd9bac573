"""Chunks without targets only advance the memory: same state, outputs and gradients as full forwards."""

import pytest
import torch

from cortexmem.llm import attach_memory

from .helpers import open_gates, small_memory, tiny_base

ARCHS = ["qwen2", "llama", "gpt2"]


def _mlm(arch: str, **kw):
    torch.manual_seed(0)
    cfg = dict(read_from="embeddings", layers=[-1], conv_kernel=4, gate_context=3, gate_context_hidden=8,
               write_init=0.1)
    cfg.update(kw)
    mlm = attach_memory(tiny_base(arch), small_memory(8, **cfg))
    open_gates(mlm)
    with torch.no_grad():  # a non-zero context term, so the conv and its carried buffer matter
        for a in mlm.memory.adapters.values():
            if a.gate_ctx is not None:
                a.gate_ctx.out.weight.normal_(0, 0.5)
    return mlm


def _close(a, b, **tol):
    fa, fb = a.flatten_keys("."), b.flatten_keys(".")
    assert sorted(fa.keys()) == sorted(fb.keys())
    for k in fa.keys():
        torch.testing.assert_close(fa[k], fb[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


class _LayerCalls:
    """Counts decoder-layer forward calls of a base model."""

    def __init__(self, mlm) -> None:
        from cortexmem.llm import find_decoder_layers

        self.n = 0
        self.handles = [m.register_forward_pre_hook(self._hit) for m in find_decoder_layers(mlm.base)[1]]

    def _hit(self, *_):
        self.n += 1


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_ingest_equals_full_forwards(arch):
    mlm = _mlm(arch)
    ids = torch.randint(3, 96, (2, 37))  # 4 full chunks + 5 tokens
    calls = _LayerCalls(mlm)
    fast = mlm.ingest(ids)
    assert calls.n == 0  # embeddings read: no decoder layer runs at all
    with torch.no_grad():
        full = mlm(ids).memory_state  # logits wanted: every chunk runs every layer with the hooks
    assert calls.n == 2 * 5
    _close(fast, full, rtol=1e-5, atol=1e-6)
    # split differently (5 + 32 tokens): the carried conv buffers make chunked calls equal one call
    _close(mlm.ingest(ids[:, 5:], state=mlm.ingest(ids[:, :5])), full, rtol=1e-5, atol=1e-5)
    nxt = torch.randint(3, 96, (2, 11))
    with torch.no_grad():
        a, b = mlm(nxt, state=fast), mlm(nxt, state=full)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    _close(a.memory_state, b.memory_state, rtol=1e-5, atol=1e-6)


def test_residual_read_fast_path_stops_after_the_last_memory_layer():
    mlm = _mlm("llama", read_from="residual", layers=[0], gate_context=0)
    ids = torch.randint(3, 96, (2, 24))
    calls = _LayerCalls(mlm)
    fast = mlm.ingest(ids)
    assert calls.n == 3  # layer 0 of each chunk, never layer 1
    with torch.no_grad():
        full = mlm(ids).memory_state
    _close(fast, full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ckpt", [False, True])
def test_unscored_chunks_give_the_same_loss_and_gradients(ckpt):
    """Answer in the last chunk only: the fast path must carry gradient back to the chunk that wrote."""
    mlm = _mlm("qwen2")
    ids = torch.randint(3, 96, (2, 32))
    labels = torch.full_like(ids, -100)
    labels[:, 29:] = ids[:, 29:]
    wmask = torch.rand(ids.shape) > 0.3
    res = {}
    for fast in (True, False):
        mlm.zero_grad(set_to_none=True)
        calls = _LayerCalls(mlm)
        out = mlm(ids, labels=labels, return_logits=False, checkpoint=ckpt, write_mask=wmask, fast_unscored=fast)
        (out.loss + out.write_gate_mean).backward()
        res[fast] = (out, {n: p.grad.clone() for n, p in mlm.memory.named_parameters() if p.grad is not None},
                     calls.n)
    (fo, fg, fn), (so, sg, sn) = res[True], res[False]
    assert fn < sn
    torch.testing.assert_close(fo.loss, so.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fo.write_gate_mean, so.write_gate_mean, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fo.write_gate_mean_outside, so.write_gate_mean_outside, rtol=1e-5, atol=1e-7)
    assert fg.keys() == sg.keys() and "adapters.1.gate_ctx.weight" in fg
    for k in fg:
        torch.testing.assert_close(fg[k], sg[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    # the writes of chunk 0 matter to the answer: its conv weights get gradient through the carried state
    assert fg["adapters.1.cell.k_proj.weight"].abs().sum() > 0


def test_write_gate_mean_matches_the_cell_gate():
    mlm = _mlm("llama")
    ids = torch.randint(3, 96, (1, 8))
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, 2:5] = True
    with torch.no_grad():
        out = mlm(ids, write_mask=mask, return_logits=False)
        a = mlm.memory.adapters["1"]
        x = a.down(a.norm(mlm.base.get_input_embeddings()(ids)))
        bias, _ = a.gate_ctx(x, torch.zeros(1, 2, x.shape[-1]))
        b = torch.sigmoid(a.cell.beta_proj(x) + bias).mean(-1)[0]
    torch.testing.assert_close(out.write_gate_mean, b[2:5].mean())
    torch.testing.assert_close(out.write_gate_mean_outside, torch.cat([b[:2], b[5:]]).mean())


def test_off_mode_skips_unscored_chunks_and_keeps_its_answer():
    mlm = _mlm("gpt2")
    ids = torch.randint(3, 96, (2, 40))
    labels = torch.full_like(ids, -100)
    labels[:, 38:] = ids[:, 38:]
    calls = _LayerCalls(mlm)
    with torch.no_grad():
        fast = mlm(ids, labels=labels, return_logits=False, memory_mode="off")
        assert calls.n == 2  # only the last chunk, which holds the targets
        slow = mlm(ids, labels=labels, return_logits=False, memory_mode="off", fast_unscored=False)
    torch.testing.assert_close(fast.loss, slow.loss)
    assert torch.equal(fast.exact_match, slow.exact_match)


def test_bad_write_mask_and_gate_context_are_rejected():
    mlm = _mlm("qwen2")
    ids = torch.randint(3, 96, (2, 16))
    with pytest.raises(ValueError, match="write_mask must have shape"):
        mlm(ids, write_mask=torch.ones(2, 15, dtype=torch.bool))
    with pytest.raises(TypeError, match="write_mask must be a tensor"):
        mlm(ids, write_mask=[[1] * 16] * 2)
    with pytest.raises(ValueError, match="memory_mode"):
        mlm(ids, write_mask=torch.ones(2, 16), memory_mode="off")
    with pytest.raises(ValueError, match="gate_context"):
        small_memory(8, gate_context=-1)
    from cortexmem.cells.lstm import LSTMCellConfig

    with pytest.raises(ValueError, match="gate_context needs a cell with a write gate"):
        attach_memory(tiny_base("llama"), small_memory(8, gate_context=4, cell=LSTMCellConfig(hidden_size=16)))


@pytest.mark.parametrize("hybrid", [False, True])
def test_beta_bias_closes_the_write_gate_of_both_delta_cells(hybrid):
    cell = small_memory(8, use_hybrid=hybrid, window=4).cell_config()
    from cortexmem.cells.base import build_cell

    torch.manual_seed(0)
    c = build_cell(cell)
    x = torch.randn(2, 12, cell.hidden_size)
    st = c.init_state(2)
    _, open_ = c.forward_sequence(x, st, None)
    _, shut = c.forward_sequence(x, st, None, beta_bias=torch.full((2, 12, c.num_heads), -60.0))
    assert open_["S"].abs().sum() > 0 and shut["S"].abs().max() < 1e-12
    torch.testing.assert_close(c.write_gates(x, torch.zeros(2, 12, c.num_heads))[1], c.write_gates(x)[1])
