"""CausalConv1dCell: causal convolution over time with a ring buffer of the last ``kernel_size - 1`` inputs."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.registry import register_cell
from ..ops.causal_conv1d import causal_conv1d
from ..ops.registry import check_requested
from .base import CellConfig, MemoryCell


class CausalConv1dCellConfig(CellConfig):
    kernel_size: int = Field(default=4, ge=1)
    channel_mixing: bool = False
    bias: bool = True
    activation: str | None = Field(default=None, pattern="^(silu|gelu|relu|tanh)$")
    backend: str = "auto"


_ACTIVATIONS = {"silu": nn.functional.silu, "gelu": nn.functional.gelu, "relu": torch.relu, "tanh": torch.tanh}


@register_cell(CausalConv1dCellConfig, token="C", name="conv")
class CausalConv1dCell(MemoryCell):
    """Depthwise (default) or channel-mixing causal conv; state ``conv`` is ``[B, kernel_size - 1, H]``."""

    def __init__(self, config: CausalConv1dCellConfig) -> None:
        super().__init__(config)
        H, K = self.hidden_size, config.kernel_size
        self.kernel_size = K
        check_requested("causal_conv1d", config.backend, depthwise=not config.channel_mixing)
        self.backend = config.backend
        shape = (H, H, K) if config.channel_mixing else (H, K)
        fan_in = K * (H if config.channel_mixing else 1)
        self.weight = nn.Parameter(torch.empty(shape).uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in)))
        self.bias = nn.Parameter(torch.zeros(H)) if config.bias else None
        self.activation = _ACTIVATIONS[config.activation] if config.activation else None

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        buf = torch.zeros(batch, self.kernel_size - 1, self.hidden_size, device=device, dtype=dtype or torch.float32)
        return TensorDict({"conv": buf}, batch_size=[batch], device=device)

    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        y, buf = causal_conv1d(x, self.weight.to(x.dtype), bias, state["conv"], resets, backend=self.backend)
        if self.activation is not None:
            y = self.activation(y)
        return y, TensorDict({"conv": buf.to(state["conv"].dtype)}, batch_size=state.batch_size, device=state.device)
