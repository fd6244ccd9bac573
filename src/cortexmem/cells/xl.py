"""XLCell: Transformer-XL multi-head attention with a rolling memory of ``mem_len`` past keys/values.

State: ``k_mem, v_mem [B, mem_len, n_heads, head_dim]`` (oldest first, zero where invalid) and ``n_valid``
(int ``[B]``: how many of the newest slots hold real tokens of the current episode); with ``use_axon_qkv`` the
Q/K/V projections are :class:`AxonLayer` s whose states live in the group ``xl_qkv`` (``q``, ``k``, ``v``).
Every query attends to itself and the ``mem_len`` tokens before it, so a sequence call equals step-by-step.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.config import polymorphic
from ..core.registry import register_cell
from ..ops.xl_attention import xl_attention
from .axon import AxonCellConfig
from .axon_layer import LayerCalls, axon_groups, linear_or_axon
from .base import CellConfig, MemoryCell


class XLCellConfig(CellConfig):
    n_heads: int = Field(default=4, ge=1)
    head_dim: int | None = Field(default=None, ge=1)
    mem_len: int = Field(default=64, ge=1)
    use_axon_qkv: bool = False
    axon: polymorphic(AxonCellConfig) | None = None
    block_size: int = Field(default=64, ge=1)

    @classmethod
    def example(cls, hidden_size: int) -> XLCellConfig:
        return cls(hidden_size=hidden_size, n_heads=2, mem_len=5, block_size=4)


def sinusoid(dist: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``[len(dist), dim]`` of (relative) distances."""
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32, device=dist.device) / dim))
    ang = dist.float()[:, None] * inv[None]
    return torch.cat([ang.sin(), ang.cos()], -1)[:, :dim]


@register_cell(XLCellConfig, token="X", block="PostUpGatedBlockConfig", name="xl", axon={"use_axon_qkv": True})
class XLCell(MemoryCell):
    def __init__(self, config: XLCellConfig) -> None:
        super().__init__(config)
        H = self.hidden_size
        nh = config.n_heads
        dh = config.head_dim or max(1, H // nh)
        self.n_heads, self.head_dim, self.mem_len = nh, dh, config.mem_len
        inner = nh * dh
        self.q_proj, self.k_proj, self.v_proj = (
            linear_or_axon(H, inner, use_axon=config.use_axon_qkv, cfg=config.axon, name=n, group="xl_qkv", bias=False)
            for n in ("q", "k", "v")
        )
        self.r_proj = nn.Linear(inner, inner, bias=False)
        self.u_bias = nn.Parameter(torch.zeros(nh, dh))
        self.v_bias = nn.Parameter(torch.zeros(nh, dh))
        self.out = nn.Linear(inner, H)
        nn.init.normal_(self.u_bias, std=0.02)
        nn.init.normal_(self.v_bias, std=0.02)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden_size}, heads={self.n_heads}x{self.head_dim}, mem_len={self.mem_len}"

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        dtype = dtype or torch.float32
        shape = (batch, self.mem_len, self.n_heads, self.head_dim)
        st: dict[str, Any] = {
            "k_mem": torch.zeros(shape, device=device, dtype=dtype),
            "v_mem": torch.zeros(shape, device=device, dtype=dtype),
            "n_valid": torch.zeros(batch, dtype=torch.int64, device=device),
        }
        st.update(axon_groups(self, batch, device=device, dtype=dtype))
        return TensorDict(st, batch_size=[batch], device=device)

    def rel_embeddings(self, dtype: torch.dtype, device: Any) -> Tensor:
        """``R [mem_len + 1, n_heads, head_dim]``: projected sinusoids of the distances ``0 .. mem_len``."""
        inner = self.n_heads * self.head_dim
        key = (dtype, str(device))
        emb = self._sinusoid_cache.get(key)
        if emb is None:  # a constant table: build it once per dtype and device, not on every call
            emb = sinusoid(torch.arange(self.mem_len + 1, device=device), inner).to(dtype)
            if not torch.is_inference_mode_enabled():  # an inference tensor could not be saved for backward
                self._sinusoid_cache[key] = emb
        return self.r_proj(emb).view(self.mem_len + 1, self.n_heads, self.head_dim)

    @property
    def _sinusoid_cache(self) -> dict[tuple[torch.dtype, str], Tensor]:
        cache = self.__dict__.get("_sin_cache")
        if cache is None:
            cache = self.__dict__["_sin_cache"] = {}
        return cache

    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        calls = LayerCalls(state, resets)
        shape = (*x.shape[:2], self.n_heads, self.head_dim)
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if all(type(p) is nn.Linear for p in projs):  # one product for q, k, v instead of three
            w = torch.cat([p.weight for p in projs])
            q, k, v = (t.view(shape) for t in torch.nn.functional.linear(x, w).chunk(3, dim=-1))
        else:
            q, k, v = (calls(p, x).view(shape) for p in projs)
        dt = q.dtype
        rel = self.rel_embeddings(dt, x.device)
        out, k_mem, v_mem, n_valid = xl_attention(
            q,
            k,
            v,
            rel,
            self.u_bias.to(dt),
            self.v_bias.to(dt),
            state["k_mem"].to(dt),
            state["v_mem"].to(dt),
            state["n_valid"],
            resets,
            self.config.block_size,
        )
        y = self.out(out.reshape(*x.shape[:2], -1))
        new: dict[str, Any] = {
            "k_mem": k_mem.to(state["k_mem"].dtype),
            "v_mem": v_mem.to(state["v_mem"].dtype),
            "n_valid": n_valid.to(state["n_valid"].dtype),
        }
        new.update(calls.new_groups())
        return y, TensorDict(new, batch_size=state.batch_size, device=state.device)
