"""AdapterBlock: identity at init."""

from __future__ import annotations

import torch

import cortexmem
from cortexmem import AdapterBlockConfig, LSTMCellConfig, PassThroughBlockConfig


def test_adapter_is_identity_at_init():
    torch.manual_seed(0)
    inner_cfg = PassThroughBlockConfig(cell=LSTMCellConfig())
    adapter = cortexmem.build_block(AdapterBlockConfig(block=inner_cfg), 8)
    x = torch.randn(2, 5, 8)
    ref, _ = adapter.block(x)
    torch.testing.assert_close(adapter(x)[0], ref)
