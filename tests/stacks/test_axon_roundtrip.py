"""Configs of the axon-family cells round-trip through JSON, and stacks of them save and load."""

from __future__ import annotations

import torch

import cortexmem as cm


def _stack_config():
    return cm.CortexStackConfig(
        d_hidden=12,
        blocks=[
            cm.PassThroughBlockConfig(cell=cm.AxonCellConfig(use_srht=True, rtu_size=5, chunk_size=4)),
            cm.PassThroughBlockConfig(
                cell=cm.XLCellConfig(
                    n_heads=2, mem_len=3, use_axon_qkv=True, axon=cm.AxonCellConfig(chunk_size=4, rtu_size=3)
                )
            ),
            cm.PreUpBlockConfig(cell=cm.AGaLiTeCellConfig(n_heads=2, eta=2, r=3)),
        ],
    )


def test_config_json_roundtrip():
    cfg = _stack_config()
    back = cm.CortexStackConfig.model_validate_json(cfg.model_dump_json())
    assert back == cfg
    assert isinstance(back.blocks[1].cell.axon, cm.AxonCellConfig) and back.blocks[1].cell.axon.rtu_size == 3


def test_stack_save_load_same_outputs(tmp_path):
    torch.manual_seed(0)
    stack = cm.build_cortex(_stack_config())
    x = torch.randn(2, 9, 12)
    y, state = stack(x)
    assert ("PassThroughBlock_1", "XLCell", "xl_qkv", "q", "trace_w") in set(state.keys(True, True))
    stack.save(tmp_path / "s")
    loaded = cm.load_stack(tmp_path / "s")
    y2, _ = loaded(x)
    torch.testing.assert_close(y2, y)
