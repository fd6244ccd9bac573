"""AxonCell: trace-path gradients across detached calls (vs full BPTT, the naive loop and finite differences),
carried traces, variants, config errors, step == sequence."""

from __future__ import annotations

import pytest
import torch

from cortexmem import AxonCell, AxonCellConfig
from cortexmem.ops.rtu import rtu_naive

D = torch.float64
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
