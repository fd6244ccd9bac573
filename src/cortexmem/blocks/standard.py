"""The standard blocks: PassThrough, PreUp, PostUp, PostUpGated."""

from __future__ import annotations

from pydantic import Field
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.registry import register_block
from .base import CellBlock, CellBlockConfig, make_norm
from .ffn import GatedFFN, GRUGate


class PassThroughBlockConfig(CellBlockConfig):
    """``y = x + cell(norm(x))``, the cell at ``d_hidden``."""


@register_block(PassThroughBlockConfig)
class PassThroughBlock(CellBlock):
    def __init__(self, config: PassThroughBlockConfig, d_hidden: int) -> None:
        super().__init__(config, d_hidden)
        self.norm = make_norm(self.config.norm, d_hidden)

    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        y, state = self.run_cell(self.norm(x), state, resets)
        return x + y, state


class PreUpBlockConfig(CellBlockConfig):
    """Up-project to ``int(proj_factor * d_hidden)``, run the cell there, gate, down-project, residual."""

    proj_factor: float = Field(default=2.0, gt=0)

    def cell_hidden_size(self, d_hidden: int) -> int:
        return max(1, int(self.proj_factor * d_hidden))


@register_block(PreUpBlockConfig)
class PreUpBlock(CellBlock):
    def __init__(self, config: PreUpBlockConfig, d_hidden: int) -> None:
        super().__init__(config, d_hidden)
        inner = self.config.cell_hidden_size(d_hidden)
        self.norm = make_norm(self.config.norm, d_hidden)
        self.up = nn.Linear(d_hidden, 2 * inner)
        self.down = nn.Linear(inner, d_hidden)

    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        a, gate = self.up(self.norm(x)).chunk(2, dim=-1)  # (B, T, inner) each
        h, state = self.run_cell(a, state, resets)
        return x + self.down(h * nn.functional.silu(gate)), state


class PostUpBlockConfig(CellBlockConfig):
    """Cell at ``d_hidden`` with residual, then a gated FFN of width ``int(proj_factor * d_hidden)`` with residual."""

    proj_factor: float = Field(default=1.5, gt=0)


@register_block(PostUpBlockConfig)
class PostUpBlock(CellBlock):
    def __init__(self, config: PostUpBlockConfig, d_hidden: int) -> None:
        super().__init__(config, d_hidden)
        self.norm = make_norm(self.config.norm, d_hidden)
        self.ffn_norm = make_norm(self.config.norm, d_hidden)
        self.ffn = GatedFFN(d_hidden, max(1, int(self.config.proj_factor * d_hidden)))

    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        y, state = self.run_cell(self.norm(x), state, resets)
        h = x + y
        return h + self.ffn(self.ffn_norm(h)), state


class PostUpGatedBlockConfig(CellBlockConfig):
    """Like PostUp, but both residual joins are GTrXL GRU gates (near identity at init)."""

    proj_factor: float = Field(default=1.5, gt=0)
    gate_bias: float = 2.0


@register_block(PostUpGatedBlockConfig)
class PostUpGatedBlock(CellBlock):
    def __init__(self, config: PostUpGatedBlockConfig, d_hidden: int) -> None:
        super().__init__(config, d_hidden)
        self.norm = make_norm(self.config.norm, d_hidden)
        self.ffn_norm = make_norm(self.config.norm, d_hidden)
        self.ffn = GatedFFN(d_hidden, max(1, int(self.config.proj_factor * d_hidden)))
        self.gate1 = GRUGate(d_hidden, self.config.gate_bias)
        self.gate2 = GRUGate(d_hidden, self.config.gate_bias)

    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        y, state = self.run_cell(self.norm(x), state, resets)
        h = self.gate1(x, nn.functional.relu(y))
        return self.gate2(h, nn.functional.relu(self.ffn(self.ffn_norm(h)))), state
