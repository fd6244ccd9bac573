"""SidecarBlock: a memory that reads and writes a frozen model's residual stream (the LLM sidecar's adapter).

``y = h + gate * rms(h) * up(norm(cell(down(norm(src)))))`` (``norm``: RMSNorm by default) with ``src = h``
unless the caller gives another source to write from (the token embeddings, in :mod:`cortexmem.llm`). ``gate``
starts at ``gate_init`` (0: the block is the identity at init, so a wrapped model's logits equal the base model's);
``rms(h)`` writes back in units of the residual's own scale. State: the cell's state itself (not nested under the
cell's name, so the LLM sessions keep their layout), plus ``gate_ctx`` with ``gate_context``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from tensordict import TensorDict
from torch import Tensor, nn

from ..cells.base import CellConfig, build_cell
from ..cells.gated_delta import DeltaMemoryCell
from ..core.registry import register_block
from .base import CellBlockConfig, MemoryBlock


class GateContext(nn.Module):
    """Write-gate logit from the last ``taps`` memory inputs: ``Linear(silu(causal_conv(x)))``, zero at init.

    State: the previous ``taps - 1`` inputs ``[B, taps - 1, width]``, so chunked calls equal one call; a reset
    before token ``t`` drops every input before ``t`` from the window.
    """

    def __init__(self, width: int, taps: int, hidden: int, heads: int) -> None:
        super().__init__()
        self.taps = taps
        bound = 1 / math.sqrt(width * taps)
        self.weight = nn.Parameter(torch.empty(hidden, width, taps).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.out = nn.Linear(hidden, heads)
        # zero read-out: the gate equals the cell's own at init and `out` gets gradient from step 0
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def init_state(self, batch: int, device: Any, dtype: torch.dtype) -> Tensor:
        return torch.zeros(batch, self.taps - 1, self.weight.shape[1], device=device, dtype=dtype)

    def forward(self, x: Tensor, buf: Tensor, resets: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x [B, T, W]``, ``buf [B, taps-1, W]``, ``resets [B, T]`` -> ``(logit [B, T, NH], new buf)``."""
        T, K = x.shape[1], self.taps
        xe = torch.cat([buf.to(x.dtype), x], dim=1)  # (B, K-1+T, W): tap k of output t reads xe[t + k]
        w, b = self.weight.to(x.dtype), self.bias.to(x.dtype)
        if resets is None:
            hid = F.conv1d(xe.transpose(1, 2), w, b).transpose(1, 2)
            return self.out(F.silu(hid)), xe[:, T:]
        seg = resets.long().cumsum(1)  # an input counts for output t only within t's segment
        seg_ext = F.pad(seg, (K - 1, 0))
        hid = b
        for k in range(K):
            same = (seg_ext[:, k:k + T] == seg)[..., None]
            hid = hid + F.linear(xe[:, k:k + T] * same, w[:, :, k])
        keep = (seg_ext[:, T:] == seg[:, -1:])[..., None]
        return self.out(F.silu(hid)), xe[:, T:] * keep


class SidecarBlockConfig(CellBlockConfig):
    """Config of :class:`SidecarBlock`. The cell runs at its own ``hidden_size`` (the memory width; ``None``: the
    block's width); ``induction_init``, ``decay_init`` and ``write_init`` are the gated-delta cells' init recipes."""

    norm: Literal["layernorm", "rmsnorm"] = "rmsnorm"
    norm_eps: float = Field(default=1e-6, gt=0.0)
    gate_init: float = Field(default=0.0, description="initial read-out gate (0: the identity at init)")
    zero_init: Literal["gate", "up"] = Field(
        default="gate", description="'up': gate 1 and a zero up-projection instead (a linear probe of the read)")
    gate_context: int = Field(default=0, ge=0, description="taps of the write-gate context conv (0: off)")
    gate_context_hidden: int = Field(default=32, ge=1)
    decay_init: float | None = None
    write_init: float | None = None
    induction_init: bool = False

    def cell_hidden_size(self, d_hidden: int) -> int:
        return self.cell.hidden_size if self.cell is not None and self.cell.hidden_size else d_hidden

    @classmethod
    def example(cls, cell: CellConfig) -> SidecarBlockConfig:
        return cls(cell=cell, gate_init=0.5)  # a live read-out, so the harness sees the memory in the outputs


@register_block(SidecarBlockConfig)
class SidecarBlock(MemoryBlock):
    """Reads and writes the residual stream through a registered cell; see the module docstring."""

    def __init__(self, config: SidecarBlockConfig, d_hidden: int) -> None:
        super().__init__(config, d_hidden)
        cfg = self.config
        width = cfg.cell.hidden_size
        norm = nn.RMSNorm if cfg.norm == "rmsnorm" else nn.LayerNorm
        self.norm = norm(d_hidden, eps=cfg.norm_eps)
        self.down = nn.Linear(d_hidden, width, bias=False)
        self.cell = build_cell(cfg.cell)
        self.out_norm = norm(width, eps=cfg.norm_eps)
        self.up = nn.Linear(width, d_hidden, bias=False)
        self.gate = nn.Parameter(torch.full((d_hidden,), float(cfg.gate_init)))
        self.gate_ctx = None
        if cfg.gate_context:
            if not hasattr(self.cell, "write_gates"):
                raise ValueError(f"gate_context needs a cell with a write gate (gated-delta / hybrid), got "
                                 f"{type(self.cell).__name__}")
            self.gate_ctx = GateContext(width, cfg.gate_context, cfg.gate_context_hidden, self.cell.num_heads)
        if cfg.zero_init == "up":
            with torch.no_grad():
                self.gate.fill_(1.0)
                self.up.weight.zero_()
        if isinstance(self.cell, DeltaMemoryCell):
            if cfg.decay_init is not None:
                self.cell.init_decay(cfg.decay_init)
            if cfg.write_init is not None:
                self.cell.init_write(cfg.write_init)
        if cfg.induction_init:
            if not isinstance(self.cell, DeltaMemoryCell):
                raise ValueError("induction_init needs a gated-delta cell with use_short_conv=True and "
                                 "compressor='none'")
            self.cell.init_induction()

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        dtype = dtype or self.gate.dtype
        st = self.cell.init_state(batch, device=device, dtype=dtype)
        if self.config.induction_init and "conv" in st.keys():
            # with the induction conv the first key sees only the carried buffer: a zero buffer gives a zero key,
            # whose L2 normalisation has a 1e12 gradient that swamps every other one under clipping
            st["conv"] = torch.full_like(st["conv"], 0.1)
        if self.gate_ctx is not None:
            st["gate_ctx"] = self.gate_ctx.init_state(batch, device, dtype)
        return st

    @property
    def has_write_gate(self) -> bool:
        return hasattr(self.cell, "write_gates")

    def write(self, src: Tensor, state: TensorDict, want_gates: bool = False, resets: Tensor | None = None
              ) -> tuple[Tensor, TensorDict, Tensor | None]:
        """Cell step on ``src [B, T, D]`` -> ``(y [B, T, W], new_state, b [B, T] or None)``.

        ``b`` (with ``want_gates``) is the write strength averaged over heads, context term included.
        """
        x = self.down(self.norm(src.to(self.gate.dtype)))  # (B, T, W)
        bias = None
        if self.gate_ctx is None:
            y, new_state = self.cell.forward_sequence(x, state, resets)
        else:
            bias, buf = self.gate_ctx(x, state["gate_ctx"], resets)
            y, new_state = self.cell.forward_sequence(x, state.exclude("gate_ctx"), resets, beta_bias=bias)
            new_state["gate_ctx"] = buf.to(state["gate_ctx"].dtype)
        b = None
        if want_gates:
            if not self.has_write_gate:
                raise ValueError(f"{type(self.cell).__name__} has no write gate to measure or penalise")
            b = self.cell.write_gates(x, bias)[1].float().mean(-1)
        return y, new_state, b

    def read_write(self, h: Tensor, state: TensorDict, src: Tensor | None = None, want_gates: bool = False,
                   resets: Tensor | None = None) -> tuple[Tensor, TensorDict, Tensor | None]:
        """``h [B, T, D]`` (written from ``src [B, T, D]`` when given) -> ``(h', new_state, b)``."""
        y, new_state, b = self.write(h if src is None else src, state, want_gates, resets)
        hf = h.to(self.gate.dtype)
        # write back in units of the residual's own scale (RMS per token): pretrained residual streams are far
        # larger than a fresh cell's output, and a gate that must grow 20x first stalls training for 1000s of steps
        scale = hf.detach().pow(2).mean(-1, keepdim=True).add(self.norm.eps or 1e-6).sqrt()
        return h + (self.gate * self.up(self.out_norm(y)) * scale).to(h.dtype), new_state, b

    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        y, new_state, _ = self.read_write(x, state, resets=resets)
        return y, new_state
