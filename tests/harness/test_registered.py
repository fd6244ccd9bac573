"""Runs the behavioural contract over every registered cell and block (later cells get it for free)."""

from __future__ import annotations

import pytest
import torch

import cortexmem
from cortexmem.core.registry import BLOCKS, CELLS

from .contract import CHECKS

HIDDEN = 16


def _cell(name):
    cfg_cls = CELLS.config_types()[name]
    return cortexmem.build_cell(cfg_cls.example(HIDDEN))


def _block(name):
    cfg_cls = BLOCKS.config_types()[name]
    return cortexmem.build_block(cfg_cls.example(cortexmem.LSTMCellConfig()), HIDDEN)


def _stack():
    return cortexmem.build_cortex(cortexmem.CortexStackConfig(d_hidden=HIDDEN, blocks=[
        cortexmem.PreUpBlockConfig(cell=cortexmem.LSTMCellConfig(num_layers=2)),
        cortexmem.PassThroughBlockConfig(cell=cortexmem.CausalConv1dCellConfig(kernel_size=4)),
    ]))


def _sidecar(cell_name, **kw):
    """The LLM sidecar's block over a narrower memory (width 8 at d_hidden 16), with its write-gate context."""
    cell = CELLS.config_types()[cell_name].example(8)
    return cortexmem.build_block(cortexmem.SidecarBlockConfig(cell=cell, gate_init=0.5, **kw), HIDDEN)


CASES = (
    [pytest.param(lambda n=n: _cell(n), id=f"cell-{n}") for n in cortexmem.list_cells()]
    + [pytest.param(lambda n=n: _block(n), id=f"block-{n}") for n in cortexmem.list_blocks()]
    + [pytest.param(_stack, id="stack-lstm-conv")]
    + [pytest.param(lambda: _sidecar("GatedDeltaCell", gate_context=3, decay_init=0.9, write_init=0.2),
                    id="sidecar-gated-delta-gate-context")]
    + [pytest.param(lambda: _sidecar("HybridCell", gate_context=2), id="sidecar-hybrid-gate-context")]
)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("factory", CASES)
def test_contract(factory, check):
    torch.manual_seed(0)
    module = factory().eval()
    check(module)
