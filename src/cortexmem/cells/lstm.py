"""LSTMCell: a stacked LSTM (cuDNN on GPU) with per-row resets; state ``h, c`` of shape ``[B, num_layers, H]``."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.registry import register_cell
from ..ops.lstm import lstm_segmented
from .base import CellConfig, MemoryCell


class LSTMCellConfig(CellConfig):
    num_layers: int = Field(default=1, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


@register_cell(LSTMCellConfig, token="L", name="lstm")
class LSTMCell(MemoryCell):
    def __init__(self, config: LSTMCellConfig) -> None:
        super().__init__(config)
        self.num_layers = config.num_layers
        self.lstm = nn.LSTM(
            self.hidden_size, self.hidden_size, num_layers=config.num_layers, batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        shape = (batch, self.num_layers, self.hidden_size)
        z = lambda: torch.zeros(shape, device=device, dtype=dtype or torch.float32)  # noqa: E731
        return TensorDict({"h": z(), "c": z()}, batch_size=[batch], device=device)

    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        h0, c0 = state["h"].to(x.dtype), state["c"].to(x.dtype)
        if x.dtype != self.lstm.weight_ih_l0.dtype:
            y, h, c = _run_cast(self.lstm, x, h0, c0, resets)
        else:
            y, h, c = lstm_segmented(self.lstm, x, h0, c0, resets)
        return y, TensorDict({"h": h, "c": c}, batch_size=state.batch_size, device=state.device)

    def weights(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per-layer ``(W_ih, W_hh, b_ih, b_hh)`` for the naive reference."""
        return [
            tuple(getattr(self.lstm, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            for k in range(self.num_layers)
        ]


def _run_cast(lstm: nn.LSTM, x: Tensor, h0: Tensor, c0: Tensor, resets: Tensor | None):
    # nn.LSTM needs input and weights of one dtype; compute in the weights' dtype and cast back.
    wdtype = lstm.weight_ih_l0.dtype
    y, h, c = lstm_segmented(lstm, x.to(wdtype), h0.to(wdtype), c0.to(wdtype), resets)
    return y.to(x.dtype), h.to(x.dtype), c.to(x.dtype)
