"""RTU ops: the parallel scan, RTRL traces and full-rank chunked form vs the naive loop; one step's traces."""

from __future__ import annotations

import pytest
import torch

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
