"""StepRunner on CPU: eager and compiled steps equal ``stack.step``; bad shapes and compile modes are refused."""

from __future__ import annotations

import pytest
import torch

import cortexmem
from cortexmem import StepRunner


def test_step_runner_eager_matches_step():
    torch.manual_seed(0)
    stack = cortexmem.build_cortex(cortexmem.CortexStackConfig(d_hidden=16, blocks=[
        cortexmem.PreUpBlockConfig(cell=cortexmem.LSTMCellConfig()),
        cortexmem.PassThroughBlockConfig(cell=cortexmem.CausalConv1dCellConfig()),
    ])).eval()
    runner = StepRunner(stack, batch=3, device="cpu")
    state = None
    for t in range(6):
        x = torch.randn(3, 16)
        r = torch.tensor([t == 3, False, t == 4])
        with torch.no_grad():
            ref, state = stack.step(x, state, resets=r)
        torch.testing.assert_close(runner.step(x, resets=r), ref, atol=0, rtol=0)
    with pytest.raises(ValueError, match="expected x of shape"):
        runner.step(torch.randn(2, 16))
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        StepRunner(stack, batch=3, device="cpu", use_graph=True)


def test_step_runner_rejects_unknown_compile_modes():
    import cortexmem
    from cortexmem import StepRunner
    from cortexmem.tools.bench import run_bench

    stack = cortexmem.build_cortex(cortexmem.CortexStackConfig(d_hidden=8, blocks=[
        cortexmem.PassThroughBlockConfig(cell=cortexmem.CausalConv1dCellConfig())]))
    with pytest.raises(ValueError, match="compile must be a bool or one of"):
        StepRunner(stack, batch=2, device="cpu", compile="fastest")
    with pytest.raises(TypeError, match="compile must be a bool or a str, got int"):
        StepRunner(stack, batch=2, device="cpu", compile=1)
    with pytest.raises(ValueError, match="step_compile must be one of"):
        run_bench(["conv"], step_compile="on")


@pytest.mark.parametrize("mode", [True, "default"])
def test_step_runner_compiled_matches_step_on_cpu(mode):
    import cortexmem
    from cortexmem import StepRunner

    torch.manual_seed(0)
    stack = cortexmem.build_cortex(cortexmem.CortexStackConfig(d_hidden=8, blocks=[
        cortexmem.PassThroughBlockConfig(cell=cortexmem.LSTMCellConfig()),  # nn.LSTM: a graph break, run eagerly
        cortexmem.PassThroughBlockConfig(cell=cortexmem.CausalConv1dCellConfig())])).eval()
    runner = StepRunner(stack, batch=2, device="cpu", compile=mode)
    state = None
    for t in range(3):
        x = torch.randn(2, 8)
        r = torch.tensor([t == 1, False])
        with torch.no_grad():
            ref, state = stack.step(x, state, resets=r)
        torch.testing.assert_close(runner.step(x, resets=r), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(runner.state.get(runner.keys[0]), state.get(runner.keys[0]), atol=1e-5, rtol=1e-5)
