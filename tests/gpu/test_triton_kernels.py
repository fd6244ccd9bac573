"""GPU parity: Triton kernels vs their naive references (outputs and gradients incl. initial state)."""

from __future__ import annotations

import pytest
import torch

from tests.harness.metrics import rel_rms

pytestmark = pytest.mark.gpu


def _run(fn, args):
    args = [a.detach().clone().requires_grad_(a.is_floating_point()) for a in args]
    y, s = fn(*args)
    g = torch.Generator(device=y.device).manual_seed(1)
    loss = (y.float() * torch.randn(y.shape, device=y.device, generator=g)).sum() + \
        (s.float() * torch.randn(s.shape, device=y.device, generator=g)).sum()
    grads = torch.autograd.grad(loss, [a for a in args if a.requires_grad], allow_unused=True)
    return [y, s], list(grads)


@pytest.mark.parametrize("T", [1, 3, 63, 300])
@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("with_resets", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_conv1d_triton_matches_naive(T, K, with_resets, dtype):
    pytest.importorskip("triton")
    from cortexmem.ops.causal_conv1d import causal_conv1d_naive
    from cortexmem.ops.causal_conv1d.triton import causal_conv1d_triton

    torch.manual_seed(T + K)
    B, H = 3, 70  # H not a multiple of the block size
    x, w, b = torch.randn(B, T, H), torch.randn(H, K) / K, torch.randn(H)
    s0 = torch.randn(B, K - 1, H)
    r = (torch.rand(B, T) < 0.1) if with_resets else None
    ref_out, ref_grad = _run(lambda *a: causal_conv1d_naive(*a, r.cuda() if r is not None else None),
                             [t.double().cuda() for t in (x, w, b, s0)])
    out, grad = _run(lambda *a: causal_conv1d_triton(*a, r.cuda() if r is not None else None),
                     [t.to(dtype).cuda() for t in (x, w, b, s0)])
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for a, c in zip(out + grad, ref_out + ref_grad, strict=True):
        if c is None or c.numel() == 0:
            continue
        assert rel_rms(a, c) <= tol


def test_step_runner_matches_step_on_cuda():
    import cortexmem
    from cortexmem import StepRunner

    torch.manual_seed(0)
    stack = cortexmem.build_cortex(cortexmem.CortexStackConfig(d_hidden=64, blocks=[
        cortexmem.PreUpBlockConfig(cell=cortexmem.LSTMCellConfig()),
        cortexmem.PassThroughBlockConfig(cell=cortexmem.CausalConv1dCellConfig()),
    ])).cuda().eval()
    runner = StepRunner(stack, batch=5, device="cuda")
    assert runner.graph is not None
    state = None
    for _ in range(12):
        x = torch.randn(5, 64, device="cuda")
        r = torch.rand(5, device="cuda") < 0.2
        with torch.no_grad():
            ref, state = stack.step(x, state, resets=r)
        got = runner.step(x, resets=r).clone()
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_backend_choice_on_cuda_is_triton_and_can_be_forced_off(monkeypatch):
    pytest.importorskip("triton")
    from cortexmem.ops.registry import select_backend

    assert select_backend("causal_conv1d", device="cuda", dtype=torch.float32).name == "triton"
    monkeypatch.setenv("CORTEX_FORCE_PYTORCH", "1")
    assert select_backend("causal_conv1d", device="cuda", dtype=torch.float32).name == "torch"


def test_doctor_passes_on_this_gpu():
    from cortexmem.tools.doctor import run_doctor

    rows = run_doctor()
    assert rows and not [r for r in rows if r.status == "FAIL"], [r for r in rows if r.status == "FAIL"]


@pytest.mark.parametrize("shape", [(3, 37, 21), (32, 256, 256)])
@pytest.mark.parametrize("with_keep", [False, True])
def test_axon_trace_kernel_matches_torch_on_cuda(shape, with_keep):
    from cortexmem.ops.rtu.recurrent import trace_w_step_torch
    from cortexmem.ops.rtu.triton import trace_w_step_triton

    B, H, Z = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    ew0 = torch.randn(B, 2, H, Z, device="cuda", generator=g)
    drive = torch.randn(B, Z, device="cuda", generator=g)
    lam = torch.polar(0.9 + 0.099 * torch.rand(H, device="cuda", generator=g, dtype=torch.float64),
                      torch.rand(H, device="cuda", generator=g, dtype=torch.float64))
    keep = (torch.rand(B, device="cuda", generator=g) > 0.3).double() if with_keep else None
    ours = trace_w_step_triton(ew0, drive, lam.real, lam.imag, keep)
    ref = trace_w_step_torch(ew0, drive, lam.real, lam.imag, keep).float()
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


def test_axon_step_state_uses_trace_kernel_and_matches_torch_on_cuda(monkeypatch):
    import cortexmem

    torch.manual_seed(0)
    stack = cortexmem.build_cortex_auto_stack(64, 1, "A").cuda().eval()
    x, r = torch.randn(7, 64, device="cuda"), torch.rand(7, device="cuda") < 0.4
    with torch.no_grad():
        _, s0 = stack.step(x, None)
        y1, s1 = stack.step(x, s0, resets=r)
        monkeypatch.setenv("CORTEX_DISABLE_TRITON", "1")
        y2, s2 = stack.step(x, s0, resets=r)
    torch.testing.assert_close(y1, y2)
    for k in s1.keys(include_nested=True, leaves_only=True):
        torch.testing.assert_close(s1[k], s2[k], atol=1e-6, rtol=1e-6)
