"""Gated delta rule ops: chunk == naive (outputs, gradients incl. initial state), step, resets, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cortexmem.ops.gated_delta import chunk_gated_delta_rule, gated_delta_rule_naive, gated_delta_rule_step

TOL = {torch.float64: 1e-8, torch.float32: 1e-5}


def _inputs(B, T, NH, Dk, Dv, dtype, seed, reset_p=0.0, g_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    q = F.normalize(r(B, T, NH, Dk), dim=-1)
    k = F.normalize(r(B, T, NH, Dk), dim=-1)
    v = r(B, T, NH, Dv)
    g = F.logsigmoid(r(B, T, NH) + 2.0) * g_scale
    beta = torch.sigmoid(r(B, T, NH))
    s0 = r(B, NH, Dk, Dv)
    resets = torch.rand(B, T, generator=gen) < reset_p
    leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v, g, beta, s0)]
    return leaves, resets


def _loss_grads(o, s, leaves, seed=11):
    gen = torch.Generator().manual_seed(seed)
    w_o = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
    w_s = torch.randn(s.shape, generator=gen, dtype=torch.float64).to(s.dtype)
    return torch.autograd.grad((o * w_o).sum() + (s * w_s).sum(), leaves)


def _assert_close(a, b, tol, what):
    err = (a - b).abs().max().item()
    scale = max(1.0, b.abs().max().item())
    assert err <= tol * scale, f"{what}: max abs err {err:.3e} > {tol:.0e} * {scale:.2f}"


CASES = [(T, C) for T in (1, 63, 64, 65) for C in (16, 64)] + [(300, 16), (300, 64)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(("T", "C"), CASES)
@pytest.mark.parametrize("reset_p", [0.0, 0.05], ids=["no-resets", "resets"])
def test_chunk_matches_naive(T, C, dtype, reset_p):
    small = T >= 300
    B, NH, Dk, Dv = (1, 1, 4, 3) if small else (2, 2, 5, 3)
    leaves, resets = _inputs(B, T, NH, Dk, Dv, dtype, seed=T * 7 + C, reset_p=reset_p)
    q, k, v, g, beta, s0 = leaves
    r = resets if reset_p else None
    o_n, s_n = gated_delta_rule_naive(q, k, v, g, beta, s0, resets=r)
    o_c, s_c = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=C, initial_state=s0, resets=r)
    tol = TOL[dtype]
    _assert_close(o_c, o_n, tol, "output")
    _assert_close(s_c, s_n, tol, "final state")
    names = ["q", "k", "v", "g", "beta", "initial_state"]
    for name, a, b in zip(names, _loss_grads(o_c, s_c, leaves), _loss_grads(o_n, s_n, leaves), strict=True):
        _assert_close(a, b, tol, f"grad {name}")


def test_reset_inside_chunk_is_exact():
    # a reset at t: the output from t on equals a fresh run on x[t:], and nothing before t leaks through
    leaves, _ = _inputs(2, 40, 2, 4, 3, torch.float64, seed=3)
    q, k, v, g, beta, s0 = (t.detach() for t in leaves)
    resets = torch.zeros(2, 40, dtype=torch.bool)
    resets[0, 13] = True  # mid-chunk for chunk_size 16
    o, s = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=16, initial_state=s0, resets=resets)
    tail = (t[:1, 13:] for t in (q, k, v, g, beta))
    o_f, s_f = chunk_gated_delta_rule(*tail, chunk_size=16)
    torch.testing.assert_close(o[:1, 13:], o_f, atol=1e-12, rtol=0)
    torch.testing.assert_close(s[:1], s_f, atol=1e-12, rtol=0)
    o_clean, _ = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=16, initial_state=s0)
    torch.testing.assert_close(o[:, :13], o_clean[:, :13], atol=1e-12, rtol=0)
    torch.testing.assert_close(o[1], o_clean[1], atol=1e-12, rtol=0)


def test_reset_equals_minus_infinite_log_decay():
    leaves, _ = _inputs(1, 20, 1, 4, 4, torch.float64, seed=5)
    q, k, v, g, beta, s0 = (t.detach() for t in leaves)
    resets = torch.zeros(1, 20, dtype=torch.bool)
    resets[0, 7] = True
    g_inf = g.clone()
    g_inf[0, 7] = float("-inf")
    o_r, _ = gated_delta_rule_naive(q, k, v, g, beta, s0, resets=resets)
    o_g, _ = gated_delta_rule_naive(q, k, v, g_inf, beta, s0)
    torch.testing.assert_close(o_r, o_g, atol=1e-12, rtol=0)


def test_strong_decay_is_stable():
    # log-space chunking: g down to -60 per step must neither overflow nor produce NaN
    leaves, resets = _inputs(2, 70, 2, 4, 3, torch.float32, seed=9, reset_p=0.1, g_scale=30.0)
    q, k, v, g, beta, s0 = leaves
    o_n, s_n = gated_delta_rule_naive(q, k, v, g, beta, s0, resets=resets)
    o_c, s_c = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64, initial_state=s0, resets=resets)
    _assert_close(o_c, o_n, 1e-5, "output")
    grads = _loss_grads(o_c, s_c, leaves)
    assert all(torch.isfinite(gr).all() for gr in grads)


def test_step_matches_paper_form():
    # S_t = a (I - b k k^T) S_{t-1} + b k v^T, the decayed-erase form of Gated DeltaNet
    gen = torch.Generator().manual_seed(0)
    q, k = (F.normalize(torch.randn(1, 1, 4, generator=gen, dtype=torch.float64), dim=-1) for _ in range(2))
    v = torch.randn(1, 1, 3, generator=gen, dtype=torch.float64)
    S = torch.randn(1, 1, 4, 3, generator=gen, dtype=torch.float64)
    a, b = torch.tensor([[0.7]], dtype=torch.float64), torch.tensor([[0.4]], dtype=torch.float64)
    o, S_new = gated_delta_rule_step(q, k, v, a.log(), b, S)
    kk = k[0, 0, :, None] @ k[0, 0, None, :]
    eye = torch.eye(4, dtype=torch.float64)
    expect = 0.7 * (eye - 0.4 * kk) @ S[0, 0] + 0.4 * k[0, 0, :, None] @ v[0, 0, None]
    torch.testing.assert_close(S_new[0, 0], expect)
    torch.testing.assert_close(o[0, 0], expect.T @ q[0, 0])


def test_half_precision_and_no_final_state():
    leaves, _ = _inputs(1, 33, 2, 4, 4, torch.bfloat16, seed=1)
    q, k, v, g, beta, s0 = (t.detach() for t in leaves)
    o, s = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=16, initial_state=s0, output_final_state=False)
    assert o.dtype == torch.bfloat16 and s is None and torch.isfinite(o.float()).all()
    o64, _ = gated_delta_rule_naive(*(t.double() for t in (q, k, v, g, beta, s0)))
    assert (o.double() - o64).abs().max() < 0.1


@pytest.mark.parametrize("op", [chunk_gated_delta_rule, gated_delta_rule_naive], ids=["chunk", "naive"])
def test_bad_inputs_name_expected_shapes(op):
    leaves, _ = _inputs(2, 5, 2, 4, 3, torch.float32, seed=0)
    q, k, v, g, beta, s0 = (t.detach() for t in leaves)
    with pytest.raises(ValueError, match=r"q must have shape \(2, 5, 2, 4\)"):
        op(q[:, :4], k, v, g, beta)
    with pytest.raises(ValueError, match="beta must have shape"):
        op(q, k, v, g, beta[..., :1])
    with pytest.raises(ValueError, match="initial_state must have shape"):
        op(q, k, v, g, beta, initial_state=s0[:1])
    with pytest.raises(ValueError, match="resets must be"):
        op(q, k, v, g, beta, resets=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="floating-point"):
        op(q, k, v.long(), g, beta)
    with pytest.raises(ValueError, match="LOG decay"):
        op(q, k, v, g.exp(), beta)  # alpha instead of log alpha


def test_bad_chunk_size():
    leaves, _ = _inputs(1, 5, 1, 4, 3, torch.float32, seed=0)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_gated_delta_rule(*leaves[:5], chunk_size=0)
