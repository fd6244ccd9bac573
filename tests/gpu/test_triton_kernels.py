"""GPU parity: Triton kernels vs their naive references (outputs and gradients incl. initial state)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def _rel_rms(a, b):
    return ((a.double() - b.double()).pow(2).mean().sqrt() / b.double().pow(2).mean().sqrt().clamp_min(1e-12)).item()


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
        assert _rel_rms(a, c) <= tol


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
    from cortexmem.core.backends import select_backend

    assert select_backend("causal_conv1d", device="cuda", dtype=torch.float32).name == "triton"
    monkeypatch.setenv("CORTEX_FORCE_PYTORCH", "1")
    assert select_backend("causal_conv1d", device="cuda", dtype=torch.float32).name == "torch"


def test_doctor_passes_on_this_gpu():
    from cortexmem.tools.doctor import run_doctor

    rows = run_doctor()
    assert rows and not [r for r in rows if r.status == "FAIL"], [r for r in rows if r.status == "FAIL"]
