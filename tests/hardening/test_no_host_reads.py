"""Stacks read nothing back to the host in forward or step (on a GPU each read is a sync that stalls launching and
breaks CUDA-graph capture). Counted on CPU by patching the Tensor methods that return host values; only reads made
from ``cortexmem`` code count. The LSTM with resets is the one exception: cuDNN runs between reset points, which
it must read."""

import pytest
import torch

import cortexmem


@pytest.mark.parametrize("pattern", ["C", "M", "S", "A", "X", "Ag", "D", "H", "AXMS"])
def test_forward_and_step_make_no_host_reads(pattern, host_reads):
    torch.manual_seed(0)
    stack = cortexmem.build_cortex_auto_stack(32, 1, pattern)
    x = torch.randn(2, 37, 32)
    resets = torch.zeros(2, 37, dtype=torch.bool)
    resets[0, 10] = True
    host_reads.clear()  # building may read (initialisation); calls may not
    _, state = stack(x, None)
    _, state = stack(x, state, resets=resets)
    stack.step(x[:, 0], state, resets=resets[:, 0])
    assert host_reads == []


def test_lstm_reads_reset_points_only(host_reads):
    stack = cortexmem.build_cortex_auto_stack(32, 1, "L")
    x = torch.randn(2, 37, 32)
    host_reads.clear()
    _, state = stack(x, None)
    assert host_reads == []
    resets = torch.zeros(2, 37, dtype=torch.bool)
    resets[1, 20] = True
    stack(x, state, resets=resets)
    assert len(host_reads) == 1 and "lstm/recurrent.py" in host_reads[0].replace("\\", "/")
