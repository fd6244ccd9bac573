"""AdapterBlock: another block followed by a residual bottleneck adapter that is the identity at init."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from tensordict import TensorDict
from torch import Tensor, nn

from ..cells.base import CellConfig
from ..core.config import polymorphic
from ..core.registry import register_block
from .base import BlockConfig, MemoryBlock, build_block, make_norm


class AdapterBlockConfig(BlockConfig):
    block: polymorphic(BlockConfig)
    bottleneck: int = Field(default=32, ge=1)
    norm: str = Field(default="layernorm", pattern="^(layernorm|rmsnorm)$")

    def resolve(self, d_hidden: int) -> AdapterBlockConfig:
        return self.model_copy(update={"block": self.block.resolve(d_hidden)})

    @classmethod
    def example(cls, cell: CellConfig) -> AdapterBlockConfig:
        from .standard import PassThroughBlockConfig

        return cls(block=PassThroughBlockConfig(cell=cell), bottleneck=8)


@register_block(AdapterBlockConfig)
class AdapterBlock(MemoryBlock):
    """``y = inner(x); out = y + up(gelu(down(norm(y))))`` with ``up`` zero-initialised."""

    def __init__(self, config: AdapterBlockConfig, d_hidden: int) -> None:
        super().__init__(config, d_hidden)
        self.block = build_block(self.config.block, d_hidden)
        self.block_key = type(self.block).__name__
        self.norm = make_norm(self.config.norm, d_hidden)
        self.down = nn.Linear(d_hidden, self.config.bottleneck)
        self.up = nn.Linear(self.config.bottleneck, d_hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        inner = self.block.init_state(batch, device=device, dtype=dtype)
        return TensorDict({self.block_key: inner}, batch_size=[batch], device=device)

    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        y, inner = self.block.forward_sequence(x, state[self.block_key], resets)
        out = y + self.up(nn.functional.gelu(self.down(self.norm(y))))
        return out, TensorDict({self.block_key: inner}, batch_size=state.batch_size, device=state.device)
