"""mLSTMCell: xLSTM matrix-memory cell (multi-head, exponential gating), chunkwise-parallel over time."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.config import polymorphic
from ..core.registry import register_cell
from ..ops.causal_conv1d import causal_conv1d
from ..ops.mlstm import mlstm
from ..ops.registry import check_requested
from .axon import AxonCellConfig
from .axon_layer import LayerCalls, axon_groups, linear_or_axon
from .base import CellConfig, MemoryCell


class mLSTMCellConfig(CellConfig):  # noqa: N801 (name fixed across the project)
    """``num_heads`` heads of width ``qk_dim_factor * H / num_heads`` (q, k) and ``v_dim_factor * H / num_heads``
    (v); ``conv1d_kernel_size = 0`` disables the causal conv in front of q, k and the i, f gates."""

    num_heads: int = Field(default=4, ge=1)
    chunk_size: int = Field(default=64, ge=1)
    conv1d_kernel_size: int = Field(default=4, ge=0)
    qk_dim_factor: float = Field(default=0.5, gt=0)
    v_dim_factor: float = Field(default=1.0, gt=0)
    forget_gate: Literal["sigmoid", "exp"] = "sigmoid"
    #: i, f, o gate projections as AxonLayers (streaming RTUs; state group ``mlstm``)
    use_axon_layer: bool = False
    #: q, k, v projections as AxonLayers (state group ``mlstm_qkv``)
    use_axon_qkv: bool = False
    #: config of those AxonLayers (default ``AxonCellConfig()``)
    axon: polymorphic(AxonCellConfig) | None = None
    backend: str = "auto"  # of the recurrence: "auto", "torch" or "triton" (auto on CUDA; see `cortex info`)

    @classmethod
    def example(cls, hidden_size: int) -> mLSTMCellConfig:
        return cls(hidden_size=hidden_size, num_heads=2, chunk_size=8, conv1d_kernel_size=4)


def head_sizes(hidden: int, factor: float, heads: int, what: str) -> int:
    """Per-head width of ``int(factor * hidden)`` split over ``heads``; ``ValueError`` when it does not divide."""
    total = int(factor * hidden)
    if total < heads or total % heads:
        raise ValueError(f"{what}: int({factor} * hidden_size {hidden}) = {total} must be a positive multiple "
                         f"of num_heads={heads}")
    return total // heads


def forget_bias_init(size: int, forget_gate: str) -> Tensor:
    """Forget-gate biases giving ``f = sigmoid(3..6)`` (about 0.95..0.998) for either gate form."""
    b = torch.linspace(3.0, 6.0, size)
    return b if forget_gate == "sigmoid" else F.logsigmoid(b)


def store_stabilised(m: Tensor, scaled: tuple[Tensor, ...], dtype: torch.dtype) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Cast a stabilised memory (values divided by ``exp(m)``) to the state ``dtype``.

    ``m`` is rounded to ``dtype`` first and the scaled tensors are re-scaled by ``exp(m - m_rounded)``, so the
    stored triple means the same memory: rounding ``m`` alone (0.5 steps near 100 in bf16) would re-weight the
    whole memory by up to ``exp(0.25)`` against new inputs.
    """
    if m.dtype == dtype:
        return m, scaled
    m_r = m.to(dtype)
    fix = torch.exp(m - m_r.to(m.dtype))
    return m_r, tuple((t * fix.view(*m.shape, *([1] * (t.dim() - m.dim())))).to(dtype) for t in scaled)


class HeadNorm(nn.Module):
    """LayerNorm over each head's features separately (xLSTM's multi-head norm); ``[..., NH * d]``."""

    def __init__(self, heads: int, dim: int) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.weight = nn.Parameter(torch.ones(heads * dim))

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.unflatten(-1, (self.heads, self.dim)), (self.dim,)).flatten(-2)
        return y * self.weight


def _fused(x: Tensor, projs: tuple[nn.Linear, ...]) -> list[Tensor]:
    """``[p(x) for p in projs]`` as one product: weights stacked, missing biases padded with zeros."""
    w = torch.cat([p.weight for p in projs])
    sizes = [p.out_features for p in projs]
    first = next(i for i, p in enumerate(projs) if p.bias is not None)
    if any(p.bias is None for p in projs[first:]):
        raise ValueError("_fused expects the biased projections last")
    b = F.pad(torch.cat([p.bias for p in projs[first:]]), (sum(sizes[:first]), 0))
    return list(F.linear(x, w, b).split(sizes, dim=-1))


@register_cell(mLSTMCellConfig, token="M", block="PreUpBlockConfig", name="mlstm",
               axon={"use_axon_layer": True, "use_axon_qkv": True})
class mLSTMCell(MemoryCell):  # noqa: N801
    """State ``C [B, NH, dk, dv]``, ``n [B, NH, dk]``, ``m [B, NH]`` (+ ``conv [B, K-1, H]``); fresh = zeros.

    q, k and the i, f gates read the (SiLU) causal-conv features, v and the output gate read the input. Each
    projection is its own small ``nn.Linear`` (``q_proj``, ``k_proj``, ``v_proj``, ``igate``, ``fgate``,
    ``ogate``) so that variants can swap them independently.
    """

    def __init__(self, config: mLSTMCellConfig) -> None:
        super().__init__(config)
        H, NH = self.hidden_size, config.num_heads
        self.dk = head_sizes(H, config.qk_dim_factor, NH, "mLSTMCell q/k size")
        self.dv = head_sizes(H, config.v_dim_factor, NH, "mLSTMCell v size")
        check_requested("mlstm", config.backend, head_dim_qk=self.dk, head_dim_v=self.dv)
        self.backend = config.backend
        self.num_heads = NH
        self.chunk_size = config.chunk_size
        self.kernel_size = config.conv1d_kernel_size
        if self.kernel_size > 0:
            bound = 1 / self.kernel_size**0.5
            self.conv_weight = nn.Parameter(torch.empty(H, self.kernel_size).uniform_(-bound, bound))
            self.conv_bias = nn.Parameter(torch.zeros(H))
        qkv = dict(use_axon=config.use_axon_qkv, cfg=config.axon, group="mlstm_qkv")
        gates = dict(use_axon=config.use_axon_layer, cfg=config.axon, group="mlstm")
        self.q_proj = linear_or_axon(H, NH * self.dk, name="q", bias=False, **qkv)
        self.k_proj = linear_or_axon(H, NH * self.dk, name="k", bias=False, **qkv)
        self.v_proj = linear_or_axon(H, NH * self.dv, name="v", bias=False, **qkv)
        self.igate = linear_or_axon(H, NH, name="igate", **gates)
        self.fgate = linear_or_axon(H, NH, name="fgate", **gates)
        self.ogate = linear_or_axon(H, NH * self.dv, name="ogate", **gates)
        self.out_norm = HeadNorm(NH, self.dv)
        self.out_proj = nn.Linear(NH * self.dv, H, bias=False)
        with torch.no_grad():
            # forget gates start near 1 (long memory), input gates near exp(0); as in the xLSTM paper
            self.fgate.bias.copy_(forget_bias_init(NH, config.forget_gate))
            self.igate.bias.normal_(0.0, 0.1)

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        dtype = dtype or torch.float32
        NH, dk, dv = self.num_heads, self.dk, self.dv
        st = {
            "C": torch.zeros(batch, NH, dk, dv, device=device, dtype=dtype),
            "n": torch.zeros(batch, NH, dk, device=device, dtype=dtype),
            "m": torch.zeros(batch, NH, device=device, dtype=dtype),
        }
        if self.kernel_size > 0:
            st["conv"] = torch.zeros(batch, self.kernel_size - 1, self.hidden_size, device=device, dtype=dtype)
        st.update(axon_groups(self, batch, device=device, dtype=dtype))
        return TensorDict(st, batch_size=[batch], device=device)

    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        B, T, _ = x.shape
        new: dict[str, Tensor] = {}
        xc = short_conv_silu(self, x, state, resets, new)
        NH = self.num_heads
        # the recurrence runs in at least fp32: exp-gated sums lose too much in bf16
        cdt = torch.promote_types(x.dtype, torch.float32)

        def heads(t: Tensor) -> Tensor:  # (B, T, NH*d) -> (B, T, NH, d)
            return t.to(cdt).unflatten(-1, (NH, -1))

        lin = LayerCalls(state, resets)  # nn.Linear or AxonLayer (which also returns its next sub-state)
        plain = all(type(p) is nn.Linear for p in (self.q_proj, self.k_proj, self.v_proj, self.igate, self.fgate,
                                                   self.ogate))
        if plain:  # two products instead of six: (q, k, i, f) read xc, (v, o) read x
            q_, k_, i_, f_ = _fused(xc, (self.q_proj, self.k_proj, self.igate, self.fgate))
            v_, o_ = _fused(x, (self.v_proj, self.ogate))
        else:
            q_, k_, i_, f_ = (lin(p, xc) for p in (self.q_proj, self.k_proj, self.igate, self.fgate))
            v_, o_ = lin(self.v_proj, x), None
        f_raw = f_.to(cdt)  # (B, T, NH)
        log_f = F.logsigmoid(f_raw) if self.config.forget_gate == "sigmoid" else f_raw
        initial = (state["C"].to(cdt), state["n"].to(cdt), state["m"].to(cdt))
        # the torch backend takes one recurrent step when T == 1 (step mode of agents)
        h, (C, n, m) = mlstm(heads(q_), heads(k_) * self.dk**-0.5, heads(v_), i_.to(cdt), log_f,
                             initial_state=initial, resets=resets, chunk_size=self.chunk_size, backend=self.backend)
        h = self.out_norm(h.flatten(-2).to(x.dtype))  # (B, T, NH*dv)
        y = self.out_proj(torch.sigmoid(lin(self.ogate, x) if o_ is None else o_) * h)
        m, (C, n) = store_stabilised(m, (C, n), state["C"].dtype)
        new.update(C=C, n=n, m=m)
        new.update(lin.new_groups())
        return y, TensorDict(new, batch_size=state.batch_size, device=state.device)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, dk={self.dk}, dv={self.dv}"


def short_conv_silu(cell: MemoryCell, x: Tensor, state: TensorDict, resets: Tensor | None,
                    new: dict[str, Tensor]) -> Tensor:
    """The xLSTM cells' input path: ``silu(causal_conv(x))`` with the carried buffer (stored in ``new["conv"]``),
    or ``x`` itself when the cell has no conv (``kernel_size == 0``)."""
    if cell.kernel_size == 0:
        return x
    xc, buf = causal_conv1d(x, cell.conv_weight.to(x.dtype), cell.conv_bias.to(x.dtype), state["conv"].to(x.dtype),
                            resets)
    new["conv"] = buf.to(state["conv"].dtype)
    return F.silu(xc)
