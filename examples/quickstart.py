"""The README quick start: build a two-block stack, run a sequence, then one step."""

import torch

from cortexmem import CortexStackConfig, LSTMCellConfig, PassThroughBlockConfig, PreUpBlockConfig, build_cortex

cfg = CortexStackConfig(d_hidden=256, blocks=[
    PreUpBlockConfig(cell=LSTMCellConfig(hidden_size=None, num_layers=2), proj_factor=2.0),
    PassThroughBlockConfig(cell=LSTMCellConfig(hidden_size=None)),
], post_norm=True)
stack = build_cortex(cfg)
state = stack.init_state(batch=4, device="cpu", dtype=torch.float32)
out, state = stack(torch.randn(4, 16, 256), state)
out, state = stack.step(torch.randn(4, 256), state)
print("output", tuple(out.shape), "state keys", sorted(state.keys()))
