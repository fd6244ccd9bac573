"""GRUCell: a stacked GRU (cuDNN on GPU) with per-row resets; state ``h`` of shape ``[B, num_layers, H]``."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.registry import register_cell
from ..ops.gru import gru_segmented
from .base import CellConfig, MemoryCell


class GRUCellConfig(CellConfig):
    num_layers: int = Field(default=1, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


@register_cell(GRUCellConfig, token="G", name="gru")
class GRUCell(MemoryCell):
    def __init__(self, config: GRUCellConfig) -> None:
        super().__init__(config)
        self.num_layers = config.num_layers
        self.gru = nn.GRU(
            self.hidden_size, self.hidden_size, num_layers=config.num_layers, batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        h = torch.zeros(batch, self.num_layers, self.hidden_size, device=device, dtype=dtype or torch.float32)
        return TensorDict({"h": h}, batch_size=[batch], device=device)

    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        # nn.GRU needs input and weights of one dtype; compute in the weights' dtype and cast back
        wdtype = self.gru.weight_ih_l0.dtype
        y, h = gru_segmented(self.gru, x.to(wdtype), state["h"].to(wdtype), resets)
        return y.to(x.dtype), TensorDict({"h": h.to(x.dtype)}, batch_size=state.batch_size, device=state.device)

    def weights(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per-layer ``(W_ih, W_hh, b_ih, b_hh)`` for the naive reference."""
        return [
            tuple(getattr(self.gru, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            for k in range(self.num_layers)
        ]
