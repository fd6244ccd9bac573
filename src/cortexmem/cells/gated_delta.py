"""GatedDeltaCell: multi-head gated delta rule memory (Gated DeltaNet) with short conv, output gate and norm.

Per head: ``S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T``, ``o_t = S_t^T q_t`` with L2-normalised
q, k (see :mod:`cortexmem.ops.gated_delta`). ``b_t = sigmoid(W_b x_t)``;
``a_t = alpha_max * exp(-e^A softplus(W_a x_t + dt_bias))`` lies in ``(0, alpha_max]``, so the op receives
``g_t = log a_t``. State: ``S [B, NH, Dh, Dh]`` and, with ``use_short_conv``, the conv buffer
``conv [B, conv_kernel_size - 1, 3 NH Dh]`` of the q/k/v conv (SiLU after the conv, as in Gated DeltaNet).

Compressor (``compressor="linear"``): an information bottleneck in front of the memory write. k and v are read
from ``z = W_down x`` of ``rank`` dims instead of ``x``, and a learned per-token write strength
``s_t = sigmoid(w_s . z_t + b_s)`` (shared by the heads) multiplies ``b_t``, so a token only writes what fits
in ``rank`` dims and only when it is salient. :meth:`DeltaMemoryCell.write_gates` exposes ``(log a, b)`` to
measure it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.registry import register_cell
from ..ops.causal_conv1d import causal_conv1d
from ..ops.gated_delta import gated_delta_rule, gated_delta_rule_step
from ..ops.registry import check_requested
from .base import CellConfig, MemoryCell


class DeltaMemoryConfig(CellConfig):
    """Fields shared by the gated-delta cells (``head_dim=None`` means ``hidden_size // num_heads``)."""

    num_heads: int = Field(default=4, ge=1)
    head_dim: int | None = Field(default=None, ge=1)
    chunk_size: int = Field(default=64, ge=1)
    alpha_max: float = Field(default=0.99, gt=0.0, le=1.0)
    use_short_conv: bool = True
    conv_kernel_size: int = Field(default=4, ge=1)
    compressor: Literal["none", "linear"] = "none"
    rank: int = Field(default=32, ge=1)
    # of the chunkwise op: "auto", "torch", "triton" (no grad) or "triton_autograd" (bf16 training on CUDA; see
    # `cortex info`)
    backend: str = "auto"

    def resolved_head_dim(self) -> int:
        if self.head_dim is not None:
            return self.head_dim
        if self.hidden_size is None or self.hidden_size % self.num_heads:
            raise ValueError(
                f"{type(self).__name__}: head_dim=None needs hidden_size divisible by num_heads, got "
                f"hidden_size={self.hidden_size}, num_heads={self.num_heads}; set head_dim explicitly"
            )
        return self.hidden_size // self.num_heads


class GatedDeltaCellConfig(DeltaMemoryConfig):
    """Config of :class:`GatedDeltaCell` (token ``D``, in a ``PreUpBlock``)."""

    @classmethod
    def example(cls, hidden_size: int) -> GatedDeltaCellConfig:
        return cls(hidden_size=hidden_size, num_heads=2, chunk_size=8)


class DeltaMemoryCell(MemoryCell):
    """Projections, short conv, gates, compressor and output path shared by the gated-delta cells."""

    def __init__(self, config: DeltaMemoryConfig) -> None:
        super().__init__(config)
        H, NH, Dh = self.hidden_size, config.num_heads, config.resolved_head_dim()
        check_requested("gated_delta", config.backend, dk=Dh, chunk_size=config.chunk_size)
        self.backend = config.backend
        self.num_heads, self.head_dim, self.chunk_size = NH, Dh, config.chunk_size
        width = NH * Dh
        write_in = H
        self.down = None
        self.strength = None
        if config.compressor == "linear":
            self.down = nn.Linear(H, config.rank, bias=False)
            self.strength = nn.Linear(config.rank, 1)
            nn.init.constant_(self.strength.bias, 2.0)  # writes start mostly open
            write_in = config.rank
        self.q_proj = nn.Linear(H, width, bias=False)
        self.k_proj = nn.Linear(write_in, width, bias=False)
        self.v_proj = nn.Linear(write_in, width, bias=False)
        self.conv_weight = None
        if config.use_short_conv:
            K = config.conv_kernel_size
            bound = 1 / math.sqrt(K)
            self.conv_weight = nn.Parameter(torch.empty(3 * width, K).uniform_(-bound, bound))
        self.beta_proj = nn.Linear(H, NH)
        self.a_proj = nn.Linear(H, NH, bias=False)
        # Mamba2-style decay: A in [1, 16], softplus(dt_bias) in [1e-3, 1e-1]
        self.A_log = nn.Parameter(torch.empty(NH).uniform_(1.0, 16.0).log())
        dt = torch.exp(torch.empty(NH).uniform_(math.log(1e-3), math.log(1e-1)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.log_alpha_max = math.log(config.alpha_max)
        self.gate_proj = nn.Linear(H, width, bias=False)
        self.o_norm = nn.RMSNorm(Dh)
        self.o_proj = nn.Linear(width, H, bias=False)

    # --- init recipes (the LLM sidecar's MemoryConfig.decay_init / write_init / induction_init) -------------
    @torch.no_grad()
    def init_decay(self, decay: float) -> None:
        """Every head forgets about ``decay`` of its memory per average token: ``A = 1`` and
        ``softplus(dt_bias) = decay`` (``a = alpha_max exp(-e^A softplus(.))``), the token-dependent part scaled
        down so that it does not swamp the small bias."""
        self.A_log.zero_()
        self.dt_bias.fill_(math.log(math.expm1(decay)))
        self.a_proj.weight.mul_(0.1)

    @torch.no_grad()
    def init_write(self, strength: float) -> None:
        """Write strength ``b`` about ``strength`` at init (a compressor's strength gate nearly open, so that this
        alone sets it)."""
        b = strength
        if self.strength is not None:
            self.strength.bias.fill_(4.0)
            b = min(b / torch.sigmoid(torch.tensor(4.0)).item(), 0.999)
        self.beta_proj.bias.fill_(math.log(b / (1 - b)))

    @torch.no_grad()
    def init_induction(self) -> None:
        """Induction pair in the short convs: the key of ``t`` sees the tokens before ``t``, the query the same taps
        ending at ``t``, the value token ``t`` alone; ``k_proj = q_proj``. Needs the short conv and no compressor."""
        w = self.conv_weight
        if w is None or getattr(self, "down", None) is not None or self.q_proj.weight.shape != self.k_proj.weight.shape:
            raise ValueError("induction_init needs a gated-delta cell with use_short_conv=True and compressor='none'")
        width, K = self.q_proj.weight.shape[0], w.shape[1]
        if K < 2:
            raise ValueError(f"induction_init needs conv_kernel >= 2, got {K}")
        self.k_proj.weight.copy_(self.q_proj.weight)
        wq, wk, wv = w[:width], w[width:2 * width], w[2 * width:]
        wq[:, 0] = 0.0  # the query sees K-1 tokens ending at t
        wk[:, :-1] = wq[:, 1:]  # the key sees the same K-1 taps one token earlier
        wk[:, -1] = 0.0
        wv.zero_()
        wv[:, -1] = 1.0

    # --- state ------------------------------------------------------------------------------------
    def _base_state(self, batch: int, device: Any, dtype: torch.dtype) -> dict[str, Tensor]:
        NH, Dh = self.num_heads, self.head_dim
        st = {"S": torch.zeros(batch, NH, Dh, Dh, device=device, dtype=dtype)}
        if self.conv_weight is not None:
            K1 = self.conv_weight.shape[1] - 1
            st["conv"] = torch.zeros(batch, K1, self.conv_weight.shape[0], device=device, dtype=dtype)
        return st

    # --- pieces -----------------------------------------------------------------------------------
    def write_gates(self, x: Tensor, beta_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x [B, T, H]`` -> ``(g = log a, b)``, each ``[B, T, NH]``; ``b`` includes the compressor.

        ``beta_bias [B, T, NH]`` is added to the write logit (a caller's own context features for the gate).
        """
        g = self.log_alpha_max - self.A_log.exp() * F.softplus(self.a_proj(x) + self.dt_bias)
        logit = self.beta_proj(x)
        beta = torch.sigmoid(logit if beta_bias is None else logit + beta_bias.to(logit.dtype))
        if self.strength is not None:
            beta = beta * torch.sigmoid(self.strength(self.down(x)))
        return g, beta

    def qkv(self, x: Tensor, conv_state: Tensor | None, resets: Tensor | None):
        """Raw (not normalised) ``q, k, v [B, T, NH, Dh]`` after the short conv, and the new conv buffer."""
        z = x if self.down is None else self.down(x)
        qkv = torch.cat([self.q_proj(x), self.k_proj(z), self.v_proj(z)], dim=-1)
        new_conv = None
        if self.conv_weight is not None:
            qkv, new_conv = causal_conv1d(qkv, self.conv_weight.to(qkv.dtype), None, conv_state, resets)
            qkv = F.silu(qkv)
        B, T, _ = x.shape
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_dim).unbind(2)
        return q, k, v, new_conv

    def memory(
        self, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, S: Tensor, resets: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Run the gated delta rule (one-step update when ``T == 1``, chunkwise otherwise)."""
        if q.shape[1] == 1:
            dt = torch.float32 if v.dtype in (torch.float16, torch.bfloat16) else v.dtype
            o, S_new = gated_delta_rule_step(
                q[:, 0].to(dt), k[:, 0].to(dt), v[:, 0].to(dt), g[:, 0].to(dt), beta[:, 0].to(dt), S.to(dt),
                None if resets is None else resets[:, 0],
            )
            return o[:, None].to(v.dtype), S_new
        # g <= log(alpha_max) <= 0 by construction: no check (a host sync per call on GPU)
        return gated_delta_rule(q, k, v, g, beta, chunk_size=self.chunk_size, initial_state=S, resets=resets,
                                backend=self.backend, check_decay=False)

    def output(self, x: Tensor, heads: Tensor) -> Tensor:
        """``heads [B, T, NH, Dh]`` -> ``[B, T, H]`` through the output gate and projection."""
        gate = F.silu(self.gate_proj(x))
        return self.o_proj(heads.flatten(2) * gate)

    def extra_repr(self) -> str:
        c = self.config
        return (f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"chunk_size={self.chunk_size}, compressor={c.compressor!r}")


@register_cell(GatedDeltaCellConfig, token="D", block="PreUpBlockConfig", name="gated_delta")
class GatedDeltaCell(DeltaMemoryCell):
    """Gated DeltaNet memory; state ``S [B, NH, Dh, Dh]`` (+ ``conv``), constant in the sequence length."""

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        st = self._base_state(batch, device, dtype or torch.float32)
        return TensorDict(st, batch_size=[batch], device=device)

    def forward_sequence(
        self, x: Tensor, state: TensorDict, resets: Tensor | None, *, beta_bias: Tensor | None = None
    ) -> tuple[Tensor, TensorDict]:
        q, k, v, conv = self.qkv(x, state.get("conv", None), resets)
        g, beta = self.write_gates(x, beta_bias)
        o, S = self.memory(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, g, beta, state["S"], resets)
        y = self.output(x, self.o_norm(o.to(x.dtype)))
        new = {"S": S.to(state["S"].dtype)}
        if conv is not None:
            new["conv"] = conv.to(state["conv"].dtype)
        return y, TensorDict(new, batch_size=state.batch_size, device=state.device)
