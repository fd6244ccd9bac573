"""Chunkwise mLSTM vs the naive loop: outputs, gradients (incl. initial state), resets inside chunks, long inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from cortexmem.ops.mlstm import mlstm_chunkwise, mlstm_naive

B, NH, DK, DV = 3, 2, 4, 5


def _inputs(T, dtype, seed, forget="sigmoid", gate_scale=1.0, batch=B):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    f_raw = gate_scale * r(batch, NH, T) + (0.0 if forget == "exp" else 2.0)
    tensors = {
        "q": r(batch, NH, T, DK), "k": r(batch, NH, T, DK) * DK**-0.5, "v": r(batch, NH, T, DV),
        "log_i": gate_scale * r(batch, NH, T),
        "log_f": F.logsigmoid(f_raw) if forget == "sigmoid" else 0.3 * f_raw,
        "C0": r(batch, NH, DK, DV), "n0": r(batch, NH, DK), "m0": r(batch, NH),
    }
    return {k: v.to(dtype).requires_grad_(True) for k, v in tensors.items()}


def _random_resets(T, seed, batch=B):
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(batch, T, generator=g) < 0.08
    if T > 21:
        r[1, 21] = True  # mid-chunk for both chunk sizes
    return r


def _run(fn, ins, resets, **kw):
    h, state = fn(*ins.values(), resets, **kw)
    return [h, *state]


def _loss(outs):
    g = torch.Generator().manual_seed(11)
    return sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)


def _assert_close(a, b, dtype, what):
    if dtype == torch.float64:
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"{what}: {m}")
    else:
        scale = b.abs().max().clamp(min=1.0)
        torch.testing.assert_close(a / scale, b / scale, rtol=0, atol=3e-5, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("T", [1, 63, 64, 200])
@pytest.mark.parametrize("chunk", [16, 64])
@pytest.mark.parametrize("case", ["resets", "no-resets", "exp-forget"])
def test_chunkwise_matches_naive(dtype, T, chunk, case):
    ins = _inputs(T, dtype, seed=T + chunk, forget="exp" if case == "exp-forget" else "sigmoid")
    resets = None if case == "no-resets" else _random_resets(T, seed=T)
    out_c = _run(mlstm_chunkwise, ins, resets, chunk_size=chunk)
    out_n = _run(mlstm_naive, ins, resets)
    for name, a, b in zip(["h", "C", "n", "m"], out_c, out_n, strict=True):
        _assert_close(a, b, dtype, name)
    grads_c = torch.autograd.grad(_loss(out_c), list(ins.values()))
    grads_n = torch.autograd.grad(_loss(out_n), list(ins.values()))
    for name, a, b in zip(ins, grads_c, grads_n, strict=True):
        _assert_close(a, b, dtype, f"grad {name}")


def test_resets_inside_chunks_are_exact_fresh_starts():
    # chunk 16, resets at 5, 21, 37 (all mid-chunk): each segment equals a fresh run, nothing leaks past a reset
    T, chunk, cuts = 64, 16, (5, 21, 37)
    ins = _inputs(T, torch.float64, seed=3)
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, list(cuts)] = True
    h, (C, n, m) = mlstm_chunkwise(*ins.values(), resets, chunk_size=chunk)
    bounds = [*cuts, T]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        fresh = {k: (v[:1, :, a:b] if k not in ("C0", "n0", "m0") else torch.zeros_like(v[:1])) for k, v in ins.items()}
        h_f, (C_f, n_f, m_f) = mlstm_chunkwise(*fresh.values(), None, chunk_size=chunk)
        torch.testing.assert_close(h[:1, :, a:b], h_f, rtol=1e-10, atol=1e-10)
    for got, want in ((C, C_f), (n, n_f), (m, m_f)):
        torch.testing.assert_close(got[:1], want, rtol=1e-10, atol=1e-10)
    # rows without resets are untouched
    h_clean, _ = mlstm_chunkwise(*ins.values(), None, chunk_size=chunk)
    torch.testing.assert_close(h[1:], h_clean[1:], rtol=0, atol=0)
    # no gradient path from anything before t=37 (or from the initial state) to outputs/state after it
    loss = h[0, :, 37:].sum() + C[0].sum() + n[0].sum() + m[0].sum()
    grads = torch.autograd.grad(loss, list(ins.values()))
    for name, gr in zip(ins, grads, strict=True):
        if name in ("C0", "n0", "m0"):
            assert gr[0].abs().max() == 0, f"initial state leaks past the resets ({name})"
        else:
            assert gr[0, :, :37].abs().max() == 0, f"{name} before t=37 leaks past the reset"
            assert gr[0, :, 37:].abs().max() > 0


class _CountCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _count_calls(T, chunk):
    ins = _inputs(T, torch.float32, seed=0)
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[:, T // 2] = True
    with _CountCalls() as counter:
        h, _ = mlstm_chunkwise(*ins.values(), resets, chunk_size=chunk)
        h.sum().backward()
    return counter.calls


def test_no_python_loop_over_time():
    # the number of torch calls depends on the number of chunks only, never on T (also for T <= chunk_size)
    assert _count_calls(3, 64) == _count_calls(17, 64) == _count_calls(64, 64)
    assert _count_calls(65, 64) == _count_calls(100, 64) == _count_calls(127, 64)


@pytest.mark.parametrize("forget", ["sigmoid", "exp"])
def test_long_sequence_large_gates_stay_finite(forget):
    T = 4096
    ins = _inputs(T, torch.float32, seed=5, forget=forget, gate_scale=30.0, batch=1)
    h, state = mlstm_chunkwise(*ins.values(), None, chunk_size=64)
    assert all(torch.isfinite(t).all() for t in (h, *state))
    grads = torch.autograd.grad(_loss([h, *state]), list(ins.values()))
    assert all(torch.isfinite(g).all() for g in grads)
    # and it is still the recurrence: fp64 chunkwise == fp64 loop; fp32 stays near them
    with torch.no_grad():
        ref = {k: v.double() for k, v in ins.items()}
        h_ref, state_ref = mlstm_naive(*ref.values(), None)
        h64, state64 = mlstm_chunkwise(*ref.values(), None, chunk_size=64)
    for a, b in zip((h64, *state64), (h_ref, *state_ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
    scale = h_ref.abs().max().clamp(min=1.0)
    torch.testing.assert_close(h.double() / scale, h_ref / scale, rtol=0, atol=2e-2)


def test_all_gates_strongly_negative_stays_finite():
    # m -> very negative; exp(-m) must not overflow into inf (which would give NaN gradients)
    T = 300
    ins = _inputs(T, torch.float32, seed=2, batch=1)
    with torch.no_grad():
        ins["log_i"].fill_(-150.0)
        ins["log_f"].fill_(-150.0)
    for fn in (mlstm_naive, lambda *a: mlstm_chunkwise(*a, chunk_size=16)):
        outs = _run(fn, ins, None)
        grads = torch.autograd.grad(_loss(outs), list(ins.values()))
        assert all(torch.isfinite(t).all() for t in (*outs, *grads))


def test_shape_errors_name_expected_and_got():
    ins = _inputs(8, torch.float32, seed=0)
    bad = dict(ins, v=ins["v"][:, :, :5])
    with pytest.raises(ValueError, match=r"v must have shape \[3, 2, 8, 5\], got \[3, 2, 5, 5\]"):
        mlstm_chunkwise(*bad.values())
    with pytest.raises(ValueError, match="resets must be bool"):
        mlstm_chunkwise(*ins.values(), torch.zeros(B, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="chunk_size"):
        mlstm_chunkwise(*ins.values(), None, chunk_size=0)
