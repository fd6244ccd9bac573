"""sLSTMCell: xLSTM scalar-memory cell (exponential gating, block-diagonal recurrence per head)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.config import polymorphic
from ..core.registry import register_cell
from ..ops.registry import check_requested
from ..ops.slstm import slstm
from .axon import AxonCellConfig
from .axon_layer import AxonLayer, LayerCalls, axon_groups
from .base import CellConfig, MemoryCell
from .mlstm import HeadNorm, forget_bias_init, head_sizes, short_conv_silu, store_stabilised


class sLSTMCellConfig(CellConfig):  # noqa: N801 (name fixed across the project)
    """``num_heads`` blocks of the recurrent matrix; ``conv1d_kernel_size = 0`` disables the causal conv in
    front of the i, f gates."""

    num_heads: int = Field(default=4, ge=1)
    conv1d_kernel_size: int = Field(default=4, ge=0)
    forget_gate: Literal["sigmoid", "exp"] = "sigmoid"
    #: gate projections as two fused AxonLayers (state group ``slstm``): ``if_gates`` on the conv features,
    #: ``zo_gates`` on the input, each ``H -> 2H``
    use_axon_layer: bool = False
    #: config of those AxonLayers (default ``AxonCellConfig()``)
    axon: polymorphic(AxonCellConfig) | None = None
    backend: str = "auto"  # of the recurrence: "auto", "torch" or "triton" (see `cortex info`)

    @classmethod
    def example(cls, hidden_size: int) -> sLSTMCellConfig:
        return cls(hidden_size=hidden_size, num_heads=2, conv1d_kernel_size=4)


@register_cell(sLSTMCellConfig, token="S", block="PostUpBlockConfig", name="slstm", axon={"use_axon_layer": True})
class sLSTMCell(MemoryCell):  # noqa: N801
    """State ``h, c, n, m`` ``[B, H]`` (+ ``conv [B, K-1, H]``); fresh = zeros.

    The i, f gates read the (SiLU) causal-conv features, z and o read the input; each input projection is its
    own ``nn.Linear`` (``igate``, ``fgate``, ``zgate``, ``ogate``), the recurrent weights are ``recurrent``
    ``[4, NH, dh, dh]`` in gate order i, f, z, o. The recurrence is nonlinear in ``h``, so the sequence path is
    a loop over time (:func:`slstm_scan` with a hand-written backward, checked against :func:`slstm_naive`,
    or one fused Triton kernel on CUDA); resets inside it are masks.
    """

    def __init__(self, config: sLSTMCellConfig) -> None:
        super().__init__(config)
        H, NH = self.hidden_size, config.num_heads
        self.dh = head_sizes(H, 1.0, NH, "sLSTMCell hidden size")
        check_requested("slstm", config.backend, head_dim=self.dh)
        self.backend = config.backend
        self.num_heads = NH
        self.kernel_size = config.conv1d_kernel_size
        if self.kernel_size > 0:
            bound = 1 / self.kernel_size**0.5
            self.conv_weight = nn.Parameter(torch.empty(H, self.kernel_size).uniform_(-bound, bound))
            self.conv_bias = nn.Parameter(torch.zeros(H))
        if config.use_axon_layer:
            self.if_gates = AxonLayer(H, 2 * H, config.axon, name="if_gates", group="slstm")
            self.zo_gates = AxonLayer(H, 2 * H, config.axon, name="zo_gates", group="slstm")
        else:
            self.igate = nn.Linear(H, H)
            self.fgate = nn.Linear(H, H)
            self.zgate = nn.Linear(H, H)
            self.ogate = nn.Linear(H, H)
        self.recurrent = nn.Parameter(torch.empty(4, NH, self.dh, self.dh).normal_(0.0, self.dh**-0.5))
        self.out_norm = HeadNorm(NH, self.dh)
        with torch.no_grad():
            # forget gates start near 1 (long memory); as in the xLSTM paper
            f_bias = self.if_gates.bias[H:] if config.use_axon_layer else self.fgate.bias
            f_bias.copy_(forget_bias_init(H, config.forget_gate))

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        dtype = dtype or torch.float32
        z = lambda: torch.zeros(batch, self.hidden_size, device=device, dtype=dtype)  # noqa: E731
        st = {"h": z(), "c": z(), "n": z(), "m": z()}
        if self.kernel_size > 0:
            st["conv"] = torch.zeros(batch, self.kernel_size - 1, self.hidden_size, device=device, dtype=dtype)
        st.update(axon_groups(self, batch, device=device, dtype=dtype))
        return TensorDict(st, batch_size=[batch], device=device)

    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        new: dict[str, Tensor] = {}
        xc = short_conv_silu(self, x, state, resets, new)
        # the recurrence runs in at least fp32: exp-gated sums lose too much in bf16
        cdt = torch.promote_types(x.dtype, torch.float32)
        if self.config.use_axon_layer:
            lin = LayerCalls(state, resets)
            gates = (*lin(self.if_gates, xc).chunk(2, -1), *lin(self.zo_gates, x).chunk(2, -1))
            new.update(lin.new_groups())
        else:
            gates = (self.igate(xc), self.fgate(xc), self.zgate(x), self.ogate(x))
        wx = torch.stack(gates, dim=2).to(cdt)
        h_seq, (h, c, n, m) = slstm(
            wx, self.recurrent.to(cdt), initial_state=tuple(state[key].to(cdt) for key in ("h", "c", "n", "m")),
            resets=resets, forget_gate=self.config.forget_gate, backend=self.backend,
        )
        y = self.out_norm(h_seq.to(x.dtype))
        sdt = state["h"].dtype
        m, (c, n) = store_stabilised(m, (c, n), sdt)
        new.update(h=h.to(sdt), c=c, n=n, m=m)
        return y, TensorDict(new, batch_size=state.batch_size, device=state.device)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, num_heads={self.num_heads}"
