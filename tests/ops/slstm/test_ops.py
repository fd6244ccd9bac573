"""sLSTM recurrence: stabiliser correctness, per-head blocks, resets as fresh starts, long inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cortexmem.ops.slstm import slstm_naive, slstm_scan

B, NH, DH = 3, 2, 4
H = NH * DH


def _inputs(T, dtype=torch.float64, seed=0, gate_scale=1.0, batch=B):
    g = torch.Generator().manual_seed(seed)
    wx = gate_scale * torch.randn(batch, T, 4, H, generator=g, dtype=torch.float64)
    R = 0.3 * torch.randn(4, NH, DH, DH, generator=g, dtype=torch.float64)
    h0 = torch.randn(batch, H, generator=g, dtype=torch.float64)
    c0 = torch.randn(batch, H, generator=g, dtype=torch.float64)
    n0 = torch.rand(batch, H, generator=g, dtype=torch.float64) + 0.5
    m0 = torch.randn(batch, H, generator=g, dtype=torch.float64)
    return [t.to(dtype).requires_grad_(True) for t in (wx, R, h0, c0, n0, m0)]


def _unstabilised(wx, R, h0, c0, n0, m0, forget_gate="sigmoid"):
    """The sLSTM equations without the stabiliser (true c, n), for moderate gates only."""
    h, c, n = h0, c0 * m0.exp(), n0 * m0.exp()
    hs = []
    for t in range(wx.shape[1]):
        heads = [torch.einsum("bd,gde->bge", h.view(-1, NH, DH)[:, k], R[:, k]) for k in range(NH)]
        rh = torch.stack(heads, dim=2).flatten(2)  # (B, 4, H)
        i_raw, f_raw, z_raw, o_raw = (wx[:, t] + rh).unbind(1)
        f = torch.sigmoid(f_raw) if forget_gate == "sigmoid" else f_raw.exp()
        c = f * c + i_raw.exp() * torch.tanh(z_raw)
        n = f * n + i_raw.exp()
        h = torch.sigmoid(o_raw) * c / n
        hs.append(h)
    return torch.stack(hs, 1)


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_stabilised_equals_unstabilised(forget_gate):
    wx, R, h0, c0, n0, m0 = _inputs(40)
    h, _ = slstm_naive(wx, R, h0, c0, n0, m0, forget_gate=forget_gate)
    torch.testing.assert_close(h, _unstabilised(wx, R, h0, c0, n0, m0, forget_gate), rtol=1e-10, atol=1e-10)


def test_output_does_not_depend_on_m():
    # (c, n, m) and (c e^d, n e^d, m - d) are the same memory
    wx, R, h0, c0, n0, m0 = _inputs(30)
    h1, (_, c1, n1, m1) = slstm_naive(wx, R, h0, c0, n0, m0)
    h2, (_, c2, n2, m2) = slstm_naive(wx, R, h0, c0 * 9.0, n0 * 9.0, m0 - math.log(9.0))
    torch.testing.assert_close(h1, h2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c1 * m1.exp(), c2 * m2.exp(), rtol=1e-10, atol=1e-10)


def test_heads_do_not_mix():
    wx, R, h0, c0, n0, m0 = _inputs(12)
    h, _ = slstm_naive(wx, R, h0, c0, n0, m0)
    grads = torch.autograd.grad(h[..., DH:].sum(), [h0, c0, n0, m0])  # outputs of head 1
    for g in grads:
        assert g[:, :DH].abs().max() == 0, "head 1 reads head 0's state"
        assert g[:, DH:].abs().max() > 0


def test_reset_is_a_fresh_start_and_cuts_gradients():
    T, cut = 20, 7
    wx, R, h0, c0, n0, m0 = _inputs(T)
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, cut] = True
    h, state = slstm_naive(wx, R, h0, c0, n0, m0, resets)
    zeros = torch.zeros(1, H, dtype=torch.float64)
    h_f, state_f = slstm_naive(wx[:1, cut:], R, zeros, zeros, zeros, zeros)
    torch.testing.assert_close(h[:1, cut:], h_f, rtol=0, atol=0)
    for a, b in zip(state, state_f, strict=True):
        torch.testing.assert_close(a[:1], b, rtol=0, atol=0)
    grads = torch.autograd.grad(h[0, cut:].sum(), [wx, h0, c0, n0, m0])
    assert grads[0][0, :cut].abs().max() == 0
    assert all(g[0].abs().max() == 0 for g in grads[1:])


def test_fresh_state_keeps_normaliser_at_least_one():
    # from a fresh state n >= 1 at every step, whatever the gates (no 0/0 when log i is very negative)
    T = 50
    wx, R, *_ = _inputs(T, gate_scale=60.0)
    z = torch.zeros(B, H, dtype=torch.float64)
    state = (z, z, z, z)
    with torch.no_grad():
        for t in range(T):
            _, state = slstm_naive(wx[:, t : t + 1], R, *state)
            assert (state[2] >= 1 - 1e-12).all()


def test_long_sequence_large_gates_stay_finite():
    T = 4096
    wx, R, h0, c0, n0, m0 = _inputs(T, dtype=torch.float32, seed=4, gate_scale=30.0, batch=1)
    with torch.no_grad():
        h, state = slstm_naive(wx, R, h0, c0, n0, m0)
    assert torch.isfinite(h).all() and all(torch.isfinite(s).all() for s in state)
    # short backward through the same large gates
    wx_s = wx[:, :256]
    h_s, state_s = slstm_naive(wx_s, R, h0, c0, n0, m0)
    loss = h_s.sum() + sum(s.sum() for s in state_s)
    grads = torch.autograd.grad(loss, [wx, R, h0, c0, n0, m0])
    assert all(torch.isfinite(g).all() for g in grads)


def test_exp_forget_matches_logsigmoid_when_given_log_values():
    # the exp-forget path reads f~ as log f directly: feeding logsigmoid(f~) must equal the sigmoid path
    wx, R, h0, c0, n0, m0 = _inputs(25)
    wx2 = wx.detach().clone()
    # only valid when f~ does not depend on h: use R with a zero forget block
    R0 = R.detach().clone()
    R0[1] = 0
    h_sig, _ = slstm_naive(wx2, R0, h0, c0, n0, m0, forget_gate="sigmoid")
    wx2[:, :, 1] = F.logsigmoid(wx2[:, :, 1])
    h_exp, _ = slstm_naive(wx2, R0, h0, c0, n0, m0, forget_gate="exp")
    torch.testing.assert_close(h_sig, h_exp, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("T", [1, 63, 200])
@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
def test_scan_matches_naive(dtype, T, forget_gate):
    # the hand-written backward of slstm_scan against autograd through the naive loop, incl. initial state
    wx, R, h0, c0, n0, m0 = _inputs(T, dtype=dtype, seed=T, gate_scale=2.0)
    with torch.no_grad():
        n0[1] = 0  # a row in the fresh (empty-memory) regime
    g = torch.Generator().manual_seed(9)
    resets = torch.rand(B, T, generator=g) < 0.1
    if T > 30:
        resets[2, 30] = True
    ins = [wx, R, h0, c0, n0, m0]
    outs = []
    for fn in (slstm_naive, slstm_scan):
        h, state = fn(*ins, resets, forget_gate)
        gen = torch.Generator().manual_seed(1)
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=dtype)).sum() for o in (h, *state))
        outs.append([h, *state, *torch.autograd.grad(loss, ins)])
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    names = ["h", "h_T", "c_T", "n_T", "m_T", "d wx", "d R", "d h0", "d c0", "d n0", "d m0"]
    for name, a, b in zip(names, *outs, strict=True):
        scale = b.abs().max().clamp(min=1.0)
        torch.testing.assert_close(a / scale, b / scale, rtol=0, atol=tol, msg=lambda m, n=name: f"{n}: {m}")


def test_scan_input_errors():
    wx, R, h0, c0, n0, m0 = _inputs(4)
    with pytest.raises(ValueError, match="wx must be"):
        slstm_scan(wx[:, :, :3], R, h0, c0, n0, m0)
    with pytest.raises(ValueError, match="forget_gate"):
        slstm_scan(wx, R, h0, c0, n0, m0, None, "relu")
