"""CPU side of the sLSTM / RTU-scan backends: registry, build-time checks, the torch fallbacks vs naive, doctor."""

from __future__ import annotations

import pytest
import torch

import cortexmem
from cortexmem.ops.registry import backends_for, select_backend
from cortexmem.ops.rtu import rtu, rtu_diag_scan, rtu_naive
from cortexmem.ops.slstm import slstm, slstm_naive, slstm_sequence


def test_registry_has_torch_and_triton_for_both_ops():
    for op in ("slstm", "rtu_scan"):
        table = backends_for(op)
        assert set(table) == {"torch", "triton"}
        assert table["triton"].priority > table["torch"].priority
        assert table["triton"].devices == frozenset({"cuda"})
        assert select_backend(op, device="cpu", dtype=torch.float32, head_dim=8).name == "torch"
    assert "head size 96" in backends_for("slstm")["triton"].supports(head_dim=96)


@pytest.mark.parametrize("config_cls", [cortexmem.sLSTMCellConfig, cortexmem.AxonCellConfig])
def test_cells_check_requested_backend_at_build_time(config_cls):
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        cortexmem.build_cell(config_cls(hidden_size=16, backend="fast"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cannot run here"):
            cortexmem.build_cell(config_cls(hidden_size=16, backend="triton"))
    cell = cortexmem.build_cell(config_cls(hidden_size=16, backend="torch"))
    y, _ = cell(torch.randn(2, 5, 16))
    assert y.shape[:2] == (2, 5)


def _grads(fn, args, *rest):
    args = [a.detach().clone().requires_grad_() for a in args]
    out = fn(*args, *rest)
    flat = [out[0], *out[1]] if isinstance(out[1], tuple) else [out]
    g = torch.Generator().manual_seed(2)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in flat)
    return flat, torch.autograd.grad(loss, args)


def test_slstm_torch_backend_matches_naive_with_resets():
    g = torch.Generator().manual_seed(0)
    B, T, NH, dh = 3, 63, 2, 4
    H = NH * dh
    args = [torch.randn(B, T, 4, H, generator=g, dtype=torch.float64),
            torch.randn(4, NH, dh, dh, generator=g, dtype=torch.float64) / 2,
            *(torch.randn(B, H, generator=g, dtype=torch.float64) for _ in range(2)),
            torch.rand(B, H, generator=g, dtype=torch.float64) + 0.5,
            torch.randn(B, H, generator=g, dtype=torch.float64)]
    r = torch.rand(B, T, generator=g) < 0.1
    r[0, 0] = r[2, 31] = True
    ref, ref_g = _grads(lambda *a: slstm_naive(*a[:6], resets=a[6]), args, r)
    out, out_g = _grads(lambda *a: slstm(*a[:2], initial_state=a[2:6], resets=a[6], backend="torch"), args, r)
    for a, b in zip(out + list(out_g), ref + list(ref_g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_slstm_torch_backend_keeps_dtype_and_computes_in_fp32():
    B, T, H = 2, 7, 8
    wx = torch.randn(B, T, 4, H).bfloat16()
    R = (torch.randn(4, 2, 4, 4) / 2).bfloat16()
    st = [torch.zeros(B, H, dtype=torch.bfloat16) for _ in range(4)]
    h_seq, finals = slstm(wx, R, initial_state=st, backend="torch")
    ref, _ = slstm_naive(wx.float(), R.float(), *(s.float() for s in st))
    assert h_seq.dtype == torch.bfloat16 and all(f.dtype == torch.bfloat16 for f in finals)
    torch.testing.assert_close(h_seq.float(), ref, rtol=1e-2, atol=1e-2)


def test_rtu_torch_backend_matches_naive_with_mid_sequence_resets():
    g = torch.Generator().manual_seed(1)
    B, T, H = 3, 63, 5
    u = torch.randn(B, T, H, generator=g, dtype=torch.complex128)
    lam = torch.polar(0.5 + 0.49 * torch.rand(H, generator=g, dtype=torch.float64),
                      torch.rand(H, generator=g, dtype=torch.float64))
    c0 = torch.randn(B, H, generator=g, dtype=torch.complex128)
    r = torch.rand(B, T, generator=g) < 0.1
    r[0, 0] = r[1, 30] = True

    def grads(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (u, lam, c0)]
        c = fn(*leaves)
        w = torch.randn(c.shape, generator=torch.Generator().manual_seed(3), dtype=torch.complex128)
        return [c, *torch.autograd.grad((c * w).real.sum(), leaves)]

    ref = grads(lambda *a: rtu_naive(*a, r)[0])
    got = grads(lambda u_, lam_, c0_: rtu(u_, lam_, initial_state=c0_, resets=r, backend="torch")[0])
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_doctor_checks_the_new_ops_on_cpu():
    from cortexmem.tools.doctor import run_doctor

    rows = [r for r in run_doctor(["cpu"]) if r.op in ("slstm", "rtu_scan")]
    passed = {(r.op, r.backend, r.dtype) for r in rows if r.status == "pass"}
    assert {("slstm", "torch", "float32"), ("slstm", "torch", "bfloat16"), ("rtu_scan", "torch", "float32")} <= passed
    assert not [r for r in rows if r.status == "FAIL"]


def _slstm_inputs(B=2, T=9, NH=2, dh=3):
    g = torch.Generator().manual_seed(5)
    return torch.randn(B, T, 4, NH * dh, generator=g), torch.randn(4, NH, dh, dh, generator=g) / 2


def _rtu_inputs(B=2, T=9, H=5):
    g = torch.Generator().manual_seed(6)
    u = torch.randn(B, T, H, generator=g, dtype=torch.complex64)
    return u, torch.polar(0.9 * torch.ones(H), torch.rand(H, generator=g))


def test_slstm_and_rtu_take_the_shared_vocabulary():
    """No initial state is the fresh (zero) state; the final state is the last step's; output_final_state=False
    returns None."""
    wx, R = _slstm_inputs()
    zeros = tuple(torch.zeros(2, 6) for _ in range(4))
    h, final = slstm(wx, R)
    h_ref, final_ref = slstm_naive(wx, R, *zeros)
    torch.testing.assert_close(h, h_ref)
    for a, b in zip(final, final_ref, strict=True):
        torch.testing.assert_close(a, b)
    assert slstm(wx, R, output_final_state=False)[1] is None
    u, lam = _rtu_inputs()
    c, c_T = rtu(u, lam)
    c_ref = rtu_naive(u, lam, torch.zeros(2, 5, dtype=torch.complex64))[0]
    torch.testing.assert_close(c, c_ref)
    torch.testing.assert_close(c_T, c_ref[:, -1])
    assert rtu(u, lam, output_final_state=False)[1] is None


def test_slstm_and_rtu_name_a_bad_input_before_running():
    wx, R = _slstm_inputs()
    with pytest.raises(ValueError, match=r"slstm: wx must be \[B, T, 4, H\]"):
        slstm(wx[:, :, :3], R)
    with pytest.raises(ValueError, match="slstm: R must be"):
        slstm(wx, R[:, :1])
    with pytest.raises(ValueError, match="slstm: initial_state must be"):
        slstm(wx, R, initial_state=(torch.zeros(2, 6),) * 3)
    u, lam = _rtu_inputs()
    with pytest.raises(ValueError, match="rtu: u must be complex"):
        rtu(u.real, lam)
    with pytest.raises(ValueError, match=r"rtu: lam must be complex \[H\]"):
        rtu(u, lam[:3])
    with pytest.raises(ValueError, match="rtu: initial_state must be"):
        rtu(u, lam, initial_state=torch.zeros(3, 5, dtype=torch.complex64))


def test_slstm_sequence_and_rtu_diag_scan_are_deprecated_aliases():
    wx, R = _slstm_inputs()
    st = tuple(torch.zeros(2, 6) for _ in range(4))
    with pytest.warns(DeprecationWarning, match="use slstm"):
        h, _ = slstm_sequence(wx, R, *st)
    torch.testing.assert_close(h, slstm(wx, R)[0], rtol=0, atol=0)
    u, lam = _rtu_inputs()
    with pytest.warns(DeprecationWarning, match="use rtu"):
        c = rtu_diag_scan(u, lam, torch.zeros(2, 5, dtype=torch.complex64))
    torch.testing.assert_close(c, rtu(u, lam)[0], rtol=0, atol=0)
