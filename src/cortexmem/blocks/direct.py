"""DirectBlock: the cell *is* the block (no norm, projection or residual added).

For cells that already carry their own norms and residual paths, such as a pretrained decoder layer.
"""

from __future__ import annotations

from tensordict import TensorDict
from torch import Tensor

from ..core.registry import register_block
from .base import CellBlock, CellBlockConfig


class DirectBlockConfig(CellBlockConfig):
    """``y = cell(x)``; the cell runs at ``d_hidden``."""


@register_block(DirectBlockConfig)
class DirectBlock(CellBlock):
    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        return self.run_cell(x, state, resets)
