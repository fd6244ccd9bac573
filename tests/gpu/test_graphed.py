"""GraphedModule on CUDA: captured forward+backward equals eager (outputs, state, parameter and input grads)."""

from __future__ import annotations

import pytest
import torch

import cortexmem

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("pattern", ["AXMS", "L", "Ag", "D"])  # D: the log-decay check must not sync in capture
def test_graphed_forward_backward_matches_eager(pattern):
    torch.manual_seed(0)
    stack = cortexmem.build_cortex_auto_stack(64, 2, pattern).cuda()
    g = cortexmem.GraphedModule(stack, batch=4, seq=37, device="cuda")
    state = None
    for _ in range(3):
        x = torch.randn(4, 37, 64, device="cuda", requires_grad=True)
        stack.zero_grad(set_to_none=True)
        y_ref, s_ref = stack(x, state)
        (y_ref.square().mean()).backward()
        ref_grads = [p.grad.clone() for p in stack.parameters()]
        ref_xgrad = x.grad.clone()
        x.grad = None
        stack.zero_grad(set_to_none=True)
        y, s = g(x, state)
        torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-4)
        (y.square().mean()).backward()
        for p, r in zip(stack.parameters(), ref_grads, strict=True):
            torch.testing.assert_close(p.grad, r, atol=2e-5, rtol=1e-3)
        torch.testing.assert_close(x.grad, ref_xgrad, atol=2e-5, rtol=1e-3)
        for k in s_ref.keys(include_nested=True, leaves_only=True):
            torch.testing.assert_close(s.get(k), s_ref.get(k).detach(), atol=2e-5, rtol=1e-4)
        state = s  # carried, detached: truncated BPTT across the calls


def test_graphed_refuses_attached_state():
    stack = cortexmem.build_cortex_auto_stack(32, 1, "M").cuda()
    g = cortexmem.GraphedModule(stack, batch=2, seq=8, device="cuda")
    x = torch.randn(2, 8, 32, device="cuda")
    _, s = stack(x, None)
    with pytest.raises(ValueError, match="constant"):
        g(x, s)


def test_compiled_step_runner_matches_step_on_cuda():
    from cortexmem import StepRunner

    torch.manual_seed(0)
    stack = cortexmem.build_cortex_auto_stack(64, 1, "AXMS").cuda().eval()
    runner = StepRunner(stack, batch=5, device="cuda", compile=True)
    state = None
    for _ in range(6):
        x = torch.randn(5, 64, device="cuda")
        r = torch.rand(5, device="cuda") < 0.3
        with torch.no_grad():
            ref, state = stack.step(x, state, resets=r)
        torch.testing.assert_close(runner.step(x, resets=r).clone(), ref, atol=1e-4, rtol=1e-4)
    for k in runner.keys:  # the state too, RTRL traces included (their step update is a Triton kernel on CUDA)
        torch.testing.assert_close(runner.state[k], state[k], atol=1e-4, rtol=1e-4)
