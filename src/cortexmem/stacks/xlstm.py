"""The xLSTM template: alternating mLSTM (in a PreUp block) and sLSTM (in a PostUp block) at one width."""

from __future__ import annotations

from ..blocks.standard import PostUpBlockConfig, PreUpBlockConfig
from ..cells.mlstm import mLSTMCellConfig
from ..cells.slstm import sLSTMCellConfig
from .stack import CortexStack, CortexStackConfig, build_cortex


def xlstm_stack_config(
    d_hidden: int, num_blocks: int, *, mlstm_proj_factor: float = 2.0, slstm_proj_factor: float = 1.5,
    mlstm_num_heads: int = 4, slstm_num_heads: int = 4, post_norm: bool = True,
) -> CortexStackConfig:
    """Config of ``num_blocks`` blocks: even indices mLSTM in ``PreUpBlock``, odd indices sLSTM in ``PostUpBlock``."""
    for name, value in (("d_hidden", d_hidden), ("num_blocks", num_blocks)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"build_xlstm_stack: {name} must be a positive int, got {value!r}")
    blocks = [
        PreUpBlockConfig(cell=mLSTMCellConfig(num_heads=mlstm_num_heads), proj_factor=mlstm_proj_factor)
        if i % 2 == 0
        else PostUpBlockConfig(cell=sLSTMCellConfig(num_heads=slstm_num_heads), proj_factor=slstm_proj_factor)
        for i in range(num_blocks)
    ]
    return CortexStackConfig(d_hidden=d_hidden, blocks=blocks, post_norm=post_norm)


def build_xlstm_stack(
    d_hidden: int, num_blocks: int, *, mlstm_proj_factor: float = 2.0, slstm_proj_factor: float = 1.5,
    mlstm_num_heads: int = 4, slstm_num_heads: int = 4, post_norm: bool = True,
) -> CortexStack:
    """Build the xLSTM template stack (see :func:`xlstm_stack_config`); sizes that do not split into the
    requested heads raise ``ValueError`` naming the cell."""
    return build_cortex(xlstm_stack_config(
        d_hidden, num_blocks, mlstm_proj_factor=mlstm_proj_factor, slstm_proj_factor=slstm_proj_factor,
        mlstm_num_heads=mlstm_num_heads, slstm_num_heads=slstm_num_heads, post_norm=post_norm,
    ))
