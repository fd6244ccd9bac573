"""build_xlstm_stack: alternating mLSTM (PreUp) / sLSTM (PostUp) blocks; contract, save/load, errors."""

from __future__ import annotations

import pytest
import torch

import cortexmem
from cortexmem import (
    CortexStackConfig,
    PostUpBlock,
    PreUpBlock,
    build_xlstm_stack,
    load_stack,
    mLSTMCell,
    sLSTMCell,
    xlstm_stack_config,
)
from tests.harness.contract import CHECKS


def test_structure_alternates_and_sizes_are_inferred():
    stack = build_xlstm_stack(32, 3, mlstm_proj_factor=2.0, slstm_proj_factor=1.5, mlstm_num_heads=4,
                              slstm_num_heads=2, post_norm=False)
    kinds = [(type(b), type(b.cell)) for b in stack.blocks]
    assert kinds == [(PreUpBlock, mLSTMCell), (PostUpBlock, sLSTMCell), (PreUpBlock, mLSTMCell)]
    assert stack.blocks[0].cell.hidden_size == 64 and stack.blocks[0].cell.num_heads == 4
    assert stack.blocks[1].cell.hidden_size == 32 and stack.blocks[1].cell.num_heads == 2
    assert stack.blocks[1].config.proj_factor == 1.5
    assert isinstance(stack.norm, torch.nn.Identity)
    y, state = stack(torch.randn(2, 11, 32))
    assert y.shape == (2, 11, 32)
    assert set(state.keys()) == {"PreUpBlock_0", "PostUpBlock_1", "PreUpBlock_2"}
    assert set(state["PostUpBlock_1", "sLSTMCell"].keys()) == {"h", "c", "n", "m", "conv"}


def test_config_round_trips_and_builds_the_same_stack():
    cfg = xlstm_stack_config(16, 2, mlstm_num_heads=2, slstm_num_heads=2)
    back = CortexStackConfig.model_validate_json(cfg.model_dump_json())
    assert back == cfg
    assert cortexmem.build_cortex(back).config == build_xlstm_stack(16, 2, mlstm_num_heads=2,
                                                                    slstm_num_heads=2).config


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    stack = build_xlstm_stack(16, 2, mlstm_num_heads=2, slstm_num_heads=2).eval()
    x = torch.randn(2, 9, 16)
    y, _ = stack(x)
    loaded = load_stack(stack.save(tmp_path / "xl")).eval()
    y2, _ = loaded(x)
    torch.testing.assert_close(y, y2, rtol=0, atol=0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_blocks must be a positive int, got 0"):
        build_xlstm_stack(16, 0)
    with pytest.raises(ValueError, match="d_hidden must be a positive int"):
        build_xlstm_stack(16.0, 2)
    with pytest.raises(ValueError, match="num_heads=3"):
        build_xlstm_stack(16, 2, mlstm_num_heads=3)
    with pytest.raises(ValueError, match="num_heads=3"):
        build_xlstm_stack(16, 2, slstm_num_heads=3)
    with pytest.raises(ValueError):
        build_xlstm_stack(16, 2, mlstm_proj_factor=-1.0)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_contract_on_xlstm_stack(check):
    torch.manual_seed(0)
    check(build_xlstm_stack(16, 2, mlstm_num_heads=2, slstm_num_heads=2).eval())
