"""Block base classes: a block runs at ``d_hidden``, wraps a cell (or other blocks) and adds residual paths."""

from __future__ import annotations

from typing import Any, Literal

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from ..cells.base import CellConfig, build_cell
from ..core.config import TaggedConfig, polymorphic
from ..core.module import MemoryModule


class BlockConfig(TaggedConfig):
    """Base config of every block."""

    def resolve(self, d_hidden: int) -> BlockConfig:
        """A new config with every inferred size filled in for ``d_hidden`` (never mutates ``self``)."""
        return self

    @classmethod
    def example(cls, cell: CellConfig) -> BlockConfig:
        """A small valid config wrapping ``cell`` (used by the behavioural harness)."""
        return cls(cell=cell)


class CellBlockConfig(BlockConfig):
    """A block holding exactly one cell. ``cell`` may be left out only in a global override
    (``override_global_configs=[PostUpGatedBlockConfig(proj_factor=2.0)]``); building such a block is an error."""

    cell: polymorphic(CellConfig) | None = None
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"

    def cell_hidden_size(self, d_hidden: int) -> int:
        return d_hidden

    def resolve(self, d_hidden: int) -> CellBlockConfig:
        if self.cell is None:
            raise ValueError(f"{type(self).__name__} has no cell: set cell=... (a block config without one is only "
                             f"valid as a global override)")
        need = self.cell_hidden_size(d_hidden)
        have = self.cell.hidden_size
        if have is None:
            return self.model_copy(update={"cell": self.cell.model_copy(update={"hidden_size": need})})
        if have != need:
            raise ValueError(
                f"{type(self).__name__} at d_hidden={d_hidden} needs {type(self.cell).__name__}.hidden_size="
                f"{need}, got {have}; set hidden_size=None to infer it"
            )
        return self


def make_norm(kind: str, dim: int) -> nn.Module:
    return nn.RMSNorm(dim) if kind == "rmsnorm" else nn.LayerNorm(dim)


class MemoryBlock(MemoryModule):
    """Base class of blocks. ``config`` is the resolved config; ``d_hidden`` the block's width."""

    config_class: type[BlockConfig]

    def __init__(self, config: BlockConfig, d_hidden: int) -> None:
        super().__init__()
        self.config = config.resolve(d_hidden)
        self.d_hidden = d_hidden
        self.input_size = d_hidden


class CellBlock(MemoryBlock):
    """A block with one cell; state ``{<CellClass>: cell_state}``."""

    def __init__(self, config: CellBlockConfig, d_hidden: int) -> None:
        super().__init__(config, d_hidden)
        self.cell = build_cell(self.config.cell)
        self.cell_key = type(self.cell).__name__

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        inner = self.cell.init_state(batch, device=device, dtype=dtype)
        return TensorDict({self.cell_key: inner}, batch_size=[batch], device=device)

    def run_cell(self, u: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        y, inner = self.cell.forward_sequence(u, state[self.cell_key], resets)
        return y, TensorDict({self.cell_key: inner}, batch_size=state.batch_size, device=state.device)


def build_block(config: BlockConfig, d_hidden: int) -> MemoryBlock:
    """Build the registered block for ``config`` at width ``d_hidden``."""
    from ..core.registry import BLOCKS

    if not isinstance(config, BlockConfig):
        raise TypeError(f"build_block expects a BlockConfig, got {type(config).__name__}")
    return BLOCKS.module_class(config)(config, d_hidden)
