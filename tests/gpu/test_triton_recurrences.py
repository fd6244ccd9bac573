"""GPU parity: the fused sLSTM and RTU-scan Triton kernels vs their naive references (outputs and gradients incl.
the initial state), fp32 tight and bf16 by relative RMS, odd T, resets at t=0 and mid-sequence."""

from __future__ import annotations

import pytest
import torch

from tests.harness.metrics import rel_rms

pytestmark = pytest.mark.gpu


def _run(fn, args, *rest):
    args = [a.detach().clone().requires_grad_() for a in args]
    outs = fn(*args, *rest)
    outs = list(outs) if isinstance(outs, tuple | list) else [outs]
    g = torch.Generator(device="cuda").manual_seed(1)
    loss = sum((o.float() * torch.randn(o.shape, device="cuda", generator=g)).sum() for o in outs)
    return outs, list(torch.autograd.grad(loss, args))


def _resets(B, T, kind, seed):
    if kind == "none":
        return None
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(B, T, generator=g) < 0.15
    r[0, 0] = True  # reset before the first step
    r[-1, T // 2] = True  # and mid-sequence
    return r.cuda()


def _assert_close(got, ref, tol, names):
    for name, a, b in zip(names, got, ref, strict=True):
        err = rel_rms(a, b)
        assert err <= tol, f"{name}: relative RMS error {err:.2e} > {tol:g}"


def _slstm_inputs(B, T, NH, dh, seed):
    g = torch.Generator().manual_seed(seed)
    H = NH * dh
    wx = torch.randn(B, T, 4, H, generator=g)
    R = torch.randn(4, NH, dh, dh, generator=g) / dh**0.5
    h0, c0, m0 = (torch.randn(B, H, generator=g) for _ in range(3))
    n0 = torch.rand(B, H, generator=g) + 0.5
    n0[1] = 0.0  # a fresh row: the stabiliser's empty-memory branch
    return [wx, R, h0, c0, n0, m0]


SLSTM_NAMES = ["h_seq", "h", "c", "n", "m", "d wx", "d R", "d h0", "d c0", "d n0", "d m0"]


@pytest.mark.parametrize("T", [1, 63, 300])
@pytest.mark.parametrize("resets", ["none", "mid"])
@pytest.mark.parametrize("forget_gate", ["sigmoid", "exp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_slstm_triton_matches_naive(T, resets, forget_gate, dtype):
    pytest.importorskip("triton")
    from cortexmem.ops.slstm import _naive_flat
    from cortexmem.ops.slstm.triton import slstm_triton

    B, NH, dh = 19, 3, 12  # B crosses a 16-row block, dh pads to 16
    args = [a.to(dtype) for a in _slstm_inputs(B, T, NH, dh, T)]
    r = _resets(B, T, resets, T + 1)
    ref_out, ref_grad = _run(_naive_flat, [a.double().cuda() for a in args], r, forget_gate)
    out, grad = _run(slstm_triton, [a.cuda() for a in args], r, forget_gate)
    assert all(o.dtype == dtype for o in out)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    _assert_close(out + grad, ref_out + ref_grad, tol, SLSTM_NAMES)


@pytest.mark.parametrize("dh", [16, 64])
def test_slstm_triton_full_head_sizes(dh):
    pytest.importorskip("triton")
    from cortexmem.ops.slstm import _naive_flat
    from cortexmem.ops.slstm.triton import slstm_triton

    B, T, NH = 33, 77, 2
    args = _slstm_inputs(B, T, NH, dh, dh)
    r = _resets(B, T, "mid", dh)
    ref_out, ref_grad = _run(_naive_flat, [a.double().cuda() for a in args], r, "sigmoid")
    out, grad = _run(slstm_triton, [a.cuda() for a in args], r, "sigmoid")
    _assert_close(out + grad, ref_out + ref_grad, 1e-4, SLSTM_NAMES)


def _rtu_inputs(B, T, H, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, T, H, 2, generator=g)
    lam = torch.view_as_real(torch.polar(0.5 + 0.499 * torch.rand(H, generator=g), torch.rand(H, generator=g) * 3))
    c0 = torch.randn(B, H, 2, generator=g)
    return [u, lam, c0]


@pytest.mark.parametrize("T", [1, 63, 300])
@pytest.mark.parametrize("resets", ["none", "mid"])
def test_rtu_scan_triton_matches_naive(T, resets):
    pytest.importorskip("triton")
    from cortexmem.ops.rtu import _naive_real
    from cortexmem.ops.rtu.triton import rtu_scan_triton

    B, H = 5, 150  # H not a multiple of the channel block
    args = _rtu_inputs(B, T, H, T)
    r = _resets(B, T, resets, T + 2)
    ref_out, ref_grad = _run(_naive_real, [a.double().cuda() for a in args], r)
    out, grad = _run(rtu_scan_triton, [a.cuda() for a in args], r)
    _assert_close(out + grad, ref_out + ref_grad, 1e-5, ["c", "d u", "d lam", "d c0"])


def test_rtu_scan_triton_adjoint_uses_next_reset():
    """A reset before step t+1 cuts d c_{t+1} / d c_t; the one before step t does not (the peer library's bug)."""
    pytest.importorskip("triton")
    from cortexmem.ops.rtu.triton import rtu_scan_triton

    B, T, H = 1, 6, 3
    u, lam, c0 = (a.cuda().requires_grad_() for a in _rtu_inputs(B, T, H, 0))
    r = torch.zeros(B, T, dtype=torch.bool, device="cuda")
    r[0, 3] = True
    c = rtu_scan_triton(u, lam, c0, r)
    du = torch.autograd.grad(c[0, 4].sum(), u)[0][0]  # d(c_4) / d u_t: nonzero for t = 3, 4, zero before
    assert du[3].abs().sum() > 0 and du[4].abs().sum() > 0
    assert du[:3].abs().sum() == 0 and du[5].abs().sum() == 0


def _cell_pair(config_cls, **fields):
    torch.manual_seed(0)
    a = config_cls(hidden_size=64, backend="torch", **fields)
    b = a.model_copy(update={"backend": "triton"})
    from cortexmem.cells import build_cell

    ca = build_cell(a).cuda()
    cb = build_cell(b).cuda()
    cb.load_state_dict(ca.state_dict())
    return ca, cb


def _cell_run(cell, x, state, r):
    x = x.detach().clone().requires_grad_()
    state = state.apply(lambda s: s.detach().clone().requires_grad_())
    y, new = cell(x, state, resets=r)
    g = torch.Generator(device="cuda").manual_seed(3)
    loss = (y.float() * torch.randn(y.shape, device="cuda", generator=g)).sum()
    loss = loss + sum((v.float() * torch.randn(v.shape, device="cuda", generator=g)).sum() for v in new.values())
    leaves = [x, *state.values()] + [p for p in cell.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [y, *new.values()], [g for g in grads if g is not None]


@pytest.mark.parametrize("name", ["slstm", "axon"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cells_triton_backend_matches_torch_backend(name, dtype):
    pytest.importorskip("triton")
    import cortexmem

    if name == "slstm":
        ca, cb = _cell_pair(cortexmem.sLSTMCellConfig, num_heads=4)
    else:
        ca, cb = _cell_pair(cortexmem.AxonCellConfig, activation="tanh", trace_grad=False)
    ca, cb = ca.to(dtype), cb.to(dtype)
    B, T = 6, 45
    x = torch.randn(B, T, 64, device="cuda", dtype=dtype)
    state = ca.init_state(B, device="cuda", dtype=dtype).apply(lambda s: torch.randn_like(s) * 0.5)
    if name == "slstm":
        state["n"] = state["n"].abs() + 0.5
    r = _resets(B, T, "mid", 5)
    out_a, grad_a = _cell_run(ca, x, state, r)
    out_b, grad_b = _cell_run(cb, x, state, r)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for i, (a, b) in enumerate(zip(out_b + grad_b, out_a + grad_a, strict=True)):
        assert rel_rms(a, b) <= tol, (i, rel_rms(a, b))


def test_recurrence_backends_on_cuda_are_triton_and_can_be_forced_off(monkeypatch):
    pytest.importorskip("triton")
    from cortexmem.ops.registry import select_backend

    assert select_backend("slstm", device="cuda", dtype=torch.float32, head_dim=64).name == "triton"
    assert select_backend("slstm", device="cuda", dtype=torch.float32, head_dim=96).name == "torch"
    assert select_backend("rtu_scan", device="cuda", dtype=torch.float32).name == "triton"
    assert select_backend("rtu_scan", device="cuda", dtype=torch.float64).name == "torch"
    monkeypatch.setenv("CORTEX_FORCE_PYTORCH", "1")
    assert select_backend("slstm", device="cuda", dtype=torch.float32, head_dim=64).name == "torch"
    assert select_backend("rtu_scan", device="cuda", dtype=torch.float32).name == "torch"
