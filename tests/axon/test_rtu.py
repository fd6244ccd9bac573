"""RTU / AxonCell: parallel scan vs naive loop, RTRL traces, trace-path gradients across detached calls."""

from __future__ import annotations

import pytest
import torch

from cortexmem import AxonCell, AxonCellConfig
from cortexmem.ops.rtu import rtu_final_traces, rtu_full_chunked, rtu_full_naive, rtu_naive, rtu_scan

D = torch.float64


def _resets(B, T, seed, p=0.15):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, generator=g) < p


def _c(*shape, requires_grad=True):
    z = torch.complex(torch.randn(*shape, dtype=D), torch.randn(*shape, dtype=D))
    return z.requires_grad_(requires_grad)


def _loss(outs, seed=7):
    g = torch.Generator().manual_seed(seed)
    total = 0
    for o in outs:
        o = torch.view_as_real(o) if o.is_complex() else o
        total = total + (o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum()
    return total


@pytest.mark.parametrize("T", [1, 7, 63])
@pytest.mark.parametrize("with_resets", [False, True])
@pytest.mark.parametrize("dense", [False, True])
def test_parallel_scan_and_traces_match_naive(T, with_resets, dense):
    torch.manual_seed(T)
    B, H, Z = 3, 5, 4
    nu = torch.randn(H, dtype=D).mul(0.5).sub(2).requires_grad_(True)
    th = torch.randn(H, dtype=D).requires_grad_(True)
    u, c0, el0 = _c(B, T, H), _c(B, H), _c(B, H)
    drive = torch.randn(B, T, Z if dense else H, dtype=D, requires_grad=True)
    ew0 = _c(B, H, Z) if dense else _c(B, H)
    r = _resets(B, T, T) if with_resets else None
    log_lam = torch.complex(-torch.exp(nu), th)
    c_n, el_n, ew_n = rtu_naive(u, torch.exp(log_lam), c0, r, drive, el0, ew0)
    c_f = rtu_scan(u, torch.exp(log_lam), c0, r)
    el_f, ew_f = rtu_final_traces(c_f, c0, log_lam, r, drive, el0, ew0)
    inputs = [nu, th, u, c0, el0, ew0, drive]
    for a, b in zip((c_f, el_f, ew_f), (c_n, el_n, ew_n), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    g_f = torch.autograd.grad(_loss([c_f, el_f, ew_f]), inputs, retain_graph=True)
    g_n = torch.autograd.grad(_loss([c_n, el_n, ew_n]), inputs)
    for a, b in zip(g_f, g_n, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("T", [1, 19])
@pytest.mark.parametrize("with_resets", [False, True])
def test_full_rank_chunked_matches_naive(T, with_resets):
    torch.manual_seed(1)
    B, H = 2, 4
    lam = (0.3 * _c(H, H, requires_grad=False)).requires_grad_(True)
    u, c0 = _c(B, T, H), _c(B, H)
    r = _resets(B, T, 5, p=0.2) if with_resets else None
    a, b = rtu_full_chunked(u, lam, c0, r, chunk=4), rtu_full_naive(u, lam, c0, r)
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    for ga, gb in zip(
        torch.autograd.grad(_loss([a]), [lam, u, c0]),
        torch.autograd.grad(_loss([b]), [lam, u, c0]),
        strict=True,
    ):
        torch.testing.assert_close(ga, gb, atol=1e-9, rtol=1e-9)


def test_trace_at_reset_uses_reset_hidden():
    # one channel, lam = 0.5, reset at t = 1: e_lam_1 = lam * 0 + c_0(after reset) = 0, then e_lam_2 = c_1 =
    # u_1
    lam = torch.tensor([0.5 + 0j], dtype=torch.complex128)
    u = torch.tensor([[[1.0 + 0j], [2.0 + 0j], [3.0 + 0j]]], dtype=torch.complex128)
    c0 = torch.tensor([[10.0 + 0j]], dtype=torch.complex128)
    r = torch.tensor([[False, True, False]])
    z = torch.zeros(1, 1, dtype=torch.complex128)
    c, el, _ = rtu_naive(u, lam, c0, r, torch.zeros(1, 3, 1, dtype=D), z, z)
    assert torch.allclose(c[0, :, 0].real, torch.tensor([6.0, 2.0, 4.0], dtype=D))
    assert el[0, 0] == 2.0  # dc_2/dlam = lam * dc_1/dlam + c_1 = 0.5 * 0 + 2


# --- trace-path gradients of the cell --------------------------------------------------------------
RECURRENT = ("nu_log", "theta_log", "w_re", "w_im")


def _cell(**kw):
    torch.manual_seed(0)
    cfg = AxonCellConfig(
        hidden_size=4,
        rtu_size=3,
        out_dim=5,
        chunk_size=4,
        activation="tanh",
        r_min=0.6,
        r_max=0.95,
        theta_max=1.0,
        **kw,
    )
    return AxonCell(cfg).double()


def _data(T=13):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, T, 4, generator=g, dtype=D)
    targets = torch.randn(3, T, 5, generator=g, dtype=D)
    r = torch.zeros(3, T, dtype=torch.bool)
    r[0, 2] = True  # inside the first call
    r[1, 6] = True  # first step of the second call (chunk boundary)
    r[2, 5] = True  # last step of the first call
    r[0, 9] = True  # inside the third call
    return x, targets, r


def _full_loss(cell, x, targets, r, state=None):
    y, _ = cell(x, state, resets=r)
    return ((y - targets) ** 2).sum()


def _trace_path_grads(cell, x, targets, r, cuts=(0, 6, 7, 13)):
    cell.zero_grad()
    state = None
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        y, state = cell(x[:, a:b], state, resets=r[:, a:b])
        ((y - targets[:, a:b]) ** 2).sum().backward()
        state = state.detach()
    return {n: p.grad.clone() for n, p in cell.named_parameters()}


def _naive_loss(cell, x, targets, r):
    """The whole cell written with the naive loop (no chunking, no traces)."""
    u, _ = cell.drive(x)
    c = rtu_naive(u, torch.exp(cell.log_lambda(D)), torch.zeros(3, cell.rtu_size, dtype=torch.complex128), r)[0]
    y = cell.out(torch.cat([torch.tanh(c.real), torch.tanh(c.imag)], -1))
    return ((y - targets) ** 2).sum()


@pytest.mark.parametrize("use_srht", [False, True])
def test_trace_path_equals_full_bptt_naive_and_finite_differences(use_srht):
    cell = _cell(use_srht=use_srht)
    x, targets, r = _data()
    got = _trace_path_grads(cell, x, targets, r)
    params = dict(cell.named_parameters())
    full = dict(zip(params, torch.autograd.grad(_full_loss(cell, x, targets, r), list(params.values())), strict=True))
    naive = dict(zip(params, torch.autograd.grad(_naive_loss(cell, x, targets, r), list(params.values())), strict=True))
    for n in params:
        torch.testing.assert_close(got[n], full[n], atol=1e-10, rtol=1e-9, msg=f"{n}: trace path vs full BPTT")
        torch.testing.assert_close(got[n], naive[n], atol=1e-10, rtol=1e-9, msg=f"{n}: trace path vs naive loop")
    eps = 1e-6
    with torch.no_grad():
        for n in RECURRENT:
            p = params[n]
            for i in range(min(p.numel(), 5)):
                flat = p.view(-1)
                old = flat[i].item()
                flat[i] = old + eps
                lp = _full_loss(cell, x, targets, r).item()
                flat[i] = old - eps
                lm = _full_loss(cell, x, targets, r).item()
                flat[i] = old
                fd = (lp - lm) / (2 * eps)
                assert abs(fd - got[n].view(-1)[i].item()) <= 1e-6 * max(1.0, abs(fd)), (n, i, fd)


def test_truncated_without_traces_differs():
    # the trace term matters: without it the gradient is the truncated one
    x, targets, r = _data()
    with_traces = _trace_path_grads(_cell(), x, targets, r)
    truncated = _trace_path_grads(_cell(trace_grad=False), x, targets, r)
    assert (with_traces["nu_log"] - truncated["nu_log"]).abs().max() > 1e-3


def test_attached_state_is_not_counted_twice():
    cell = _cell()
    x, targets, r = _data()
    params = list(cell.parameters())
    state, loss = None, 0
    for a, b in ((0, 6), (6, 13)):  # state kept attached: plain autograd, no injection
        y, state = cell(x[:, a:b], state, resets=r[:, a:b])
        loss = loss + ((y - targets[:, a:b]) ** 2).sum()
    g_attached = torch.autograd.grad(loss, params)
    g_full = torch.autograd.grad(_full_loss(cell, x, targets, r), params)
    for a, b in zip(g_attached, g_full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def test_carried_traces_are_the_jacobian():
    cell = _cell()
    x, _, r = _data()
    _, s = cell(x, None, resets=r)
    h = s["h"]
    (j_nu,) = torch.autograd.grad(h[:, 0].sum(), [cell.nu_log], retain_graph=True)
    (j_w,) = torch.autograd.grad(h[:, 1].sum(), [cell.w_re])
    lam = torch.exp(cell.log_lambda(D)).detach()
    e_lam = torch.complex(s["trace_lam"][:, 0], s["trace_lam"][:, 1]).detach()
    # d lam / d nu_log = lam * (-exp(nu_log)); dc/dnu = e_lam * that; sum over batch of its real part
    expect_nu = (e_lam * lam * -torch.exp(cell.nu_log.detach())).real.sum(0)
    torch.testing.assert_close(j_nu, expect_nu, atol=1e-10, rtol=1e-9)
    expect_w = s["trace_w"][:, 1].detach().sum(0)  # d Im(c)/d W_re = Im(e_W)
    torch.testing.assert_close(j_w, expect_w, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("kw", [dict(rank="full"), dict(use_srht=True, srht_permute=False), dict(traces=False)])
def test_variants_run_and_split_equals_whole(kw):
    cell = _cell(**kw)
    x, _, r = _data()
    y, s = cell(x, None, resets=r)
    y1, s1 = cell(x[:, :6], None, resets=r[:, :6])
    y2, s2 = cell(x[:, 6:], s1, resets=r[:, 6:])
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-10, rtol=1e-10)
    assert ("trace_w" in s.keys()) == (kw.get("rank") != "full" and kw.get("traces", True))


def test_config_errors():
    with pytest.raises(ValueError, match="r_min"):
        AxonCellConfig(hidden_size=4, r_min=0.99, r_max=0.9)
    with pytest.raises(ValueError, match="rank='diag'"):
        AxonCellConfig(hidden_size=4, rank="full", use_srht=True)


def test_scan_stable_for_fast_and_slow_decays_long_odd_T():
    # |lam| from 1e-3 to 0.9999 over T = 301 steps: only products of |a| <= 1 appear, nothing overflows
    B, T, H = 2, 301, 4
    lam = torch.polar(torch.tensor([1e-3, 0.5, 0.99, 0.9999], dtype=D), torch.tensor([0.1, 2.0, -0.3, 0.01], dtype=D))
    u, c0 = _c(B, T, H, requires_grad=False), _c(B, H, requires_grad=False)
    r = _resets(B, T, 3, p=0.02)
    torch.testing.assert_close(rtu_scan(u, lam, c0, r), rtu_naive(u, lam, c0, r)[0], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dense", [True, False])
def test_step_traces_match_one_naive_step(dense):
    from cortexmem.ops.rtu.recurrent import rtu_step_traces

    g = torch.Generator().manual_seed(3)
    B, H, Z = 5, 7, 4
    cplx = lambda *s: torch.complex(torch.randn(*s, generator=g), torch.randn(*s, generator=g))  # noqa: E731
    lam = torch.polar(0.5 + 0.5 * torch.rand(H, generator=g), torch.rand(H, generator=g))
    c0, u = cplx(B, H), cplx(B, 1, H)
    drive = torch.randn(B, 1, Z if dense else H, generator=g)
    e_lam0, e_w0 = cplx(B, H), cplx(B, H, Z) if dense else cplx(B, H)
    reset = torch.tensor([True, False, False, True, False])
    _, el, ew = rtu_naive(u, lam, c0, reset[:, None], drive, e_lam0, e_w0)
    real = lambda z: torch.stack([z.real, z.imag], 1)  # noqa: E731
    prev = torch.where(reset[:, None], torch.zeros_like(c0), c0)
    el2, ew2 = rtu_step_traces(prev.real, prev.imag, lam.real, lam.imag, reset, drive[:, 0], real(e_lam0),
                               real(e_w0))
    torch.testing.assert_close(el2, real(el), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ew2, real(ew), rtol=1e-5, atol=1e-6)


def test_cell_step_equals_sequence_with_traces():
    cell = AxonCell(AxonCellConfig(hidden_size=12, activation="tanh"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, 12, generator=g)
    resets = torch.zeros(3, 9, dtype=torch.bool)
    resets[1, 4] = True
    y, s = cell(x, None, resets=resets)
    st, ys = None, []
    for t in range(9):
        yt, st = cell(x[:, t], st, resets=resets[:, t])
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-5, atol=1e-5)
    for k in ("h", "trace_lam", "trace_w"):
        torch.testing.assert_close(st[k], s[k], rtol=1e-4, atol=1e-5)
