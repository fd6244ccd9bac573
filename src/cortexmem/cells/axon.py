"""AxonCell: a streaming Recurrent Trace Unit (Elelimy et al., 2024) whose state carries its RTRL traces.

``x [B, T, hidden_size]`` -> drive ``u = W x`` (or ``w * SRHT(x)``) -> ``c_t = lam * c_{t-1} + u_t`` (complex,
per channel) -> ``y = W_out [act(Re c); act(Im c)] + b``. State (real, ``[B, 2, ...]`` = real/imag parts):
``h [B, 2, H]``, ``trace_lam [B, 2, H]``, ``trace_w [B, 2, H, Z]`` (dense) or ``[B, 2, H]`` (SRHT).

Trace-path gradients (``trace_grad=True``, diagonal rank only): when the incoming ``h`` carries no autograd
graph (the caller detached the state between calls, i.e. truncated BPTT), the carried traces are injected as
the Jacobian of ``h`` w.r.t. ``nu, theta, W`` (:func:`~cortexmem.ops.rtu.inject_traces`), so the gradient of a
loss in this call w.r.t. the recurrent parameters equals full BPTT through all earlier calls. When ``h`` does
carry a graph (state kept attached, or a leaf that requires grad, e.g. to get gradients *to* the initial
state) nothing is injected: ordinary autograd already runs through it, and injecting would count the past
twice. Either way gradients reach the initial state through ordinary autograd. ``rank="full"`` (dense complex
``Lam [H, H]``) carries no traces (``O(H^3)`` per row) and is plain truncated BPTT, kept for comparison.

Backends (``backend``): the diagonal scan runs through the ``rtu_scan`` op (a fused Triton loop over time on
CUDA, a log-depth parallel scan otherwise); the closed-form final traces stay in PyTorch, in float64.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.registry import register_cell
from ..ops.hadamard import srht
from ..ops.registry import check_requested
from ..ops.rtu import inject_traces, rtu, rtu_final_traces, rtu_full_chunked
from ..ops.rtu.recurrent import rtu_step_traces
from .base import CellConfig, MemoryCell


class AxonCellConfig(CellConfig):
    """``hidden_size`` is the input width; ``rtu_size`` (complex channels) and ``out_dim`` default to it."""

    rtu_size: int | None = Field(default=None, ge=1)
    out_dim: int | None = Field(default=None, ge=1)
    rank: Literal["diag", "full"] = "diag"
    activation: Literal["identity", "tanh", "silu", "relu"] = "identity"
    use_srht: bool = False
    srht_permute: bool = True
    traces: bool = True
    trace_grad: bool = True
    r_min: float = Field(default=0.9, gt=0.0, lt=1.0)
    r_max: float = Field(default=0.999, gt=0.0, lt=1.0)
    theta_max: float = Field(default=math.pi / 8, gt=0.0)
    chunk_size: int = Field(default=16, ge=1)  # time chunk of the full-rank path (matrix powers)
    seed: int = 0
    backend: str = "auto"  # of the diagonal scan: "auto", "torch" or "triton" (the traces stay in torch)

    @field_validator("activation", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v  # the peer library spells "SiLU", "Tanh"

    @model_validator(mode="after")
    def _check(self) -> AxonCellConfig:
        if self.r_min > self.r_max:
            raise ValueError(f"r_min must be <= r_max, got r_min={self.r_min}, r_max={self.r_max}")
        if self.rank == "full" and self.use_srht:
            raise ValueError("use_srht mixes channels for the diagonal recurrence; expected rank='diag' with it")
        return self

    @classmethod
    def example(cls, hidden_size: int) -> AxonCellConfig:
        return cls(hidden_size=hidden_size, chunk_size=8, activation="tanh")



#: the peer library's name of this config (docs/migration.md lists every name mapping)
AxonConfig = AxonCellConfig

_ACT = {"identity": lambda v: v, "tanh": torch.tanh, "silu": nn.functional.silu, "relu": torch.relu}


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # complex arithmetic exists for float32/float64 only; half precisions compute in float32
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


@register_cell(AxonCellConfig, token="A", block="PostUpBlockConfig", name="axon")
class AxonCell(MemoryCell):
    def __init__(self, config: AxonCellConfig) -> None:
        super().__init__(config)
        Z = self.hidden_size
        H = config.rtu_size or Z
        self.rtu_size, self.out_dim = H, config.out_dim or Z
        check_requested("rtu_scan", config.backend)
        self.backend = config.backend
        self.diag = config.rank == "diag"
        self.carry_traces = self.diag and config.traces
        self.act = _ACT[config.activation]
        g = torch.Generator().manual_seed(config.seed)
        r = config.r_min + (config.r_max - config.r_min) * torch.rand(H, generator=g)
        theta = config.theta_max * torch.rand(H, generator=g).clamp_min(1e-3)
        # input scale sqrt(1 - r^2) keeps E|c|^2 near E|u|^2 at init (as in LRU); learned freely afterwards
        gain = torch.sqrt(1 - r**2)
        if self.diag:
            self.nu_log = nn.Parameter(torch.log(-torch.log(r)))
            self.theta_log = nn.Parameter(torch.log(theta))
        else:
            lam = torch.polar(r, theta)
            self.lam_re = nn.Parameter(torch.diag(lam.real))
            self.lam_im = nn.Parameter(torch.diag(lam.imag))
        if config.use_srht:
            self.register_buffer("srht_signs", torch.randint(0, 2, (Z,), generator=g).float() * 2 - 1)
            N = 1 << (max(Z, H) - 1).bit_length()
            index = torch.randperm(N, generator=g)[:H] if config.srht_permute else torch.arange(H)
            self.register_buffer("srht_index", index)
            self.w_re = nn.Parameter(gain * torch.randn(H, generator=g) / math.sqrt(2))
            self.w_im = nn.Parameter(gain * torch.randn(H, generator=g) / math.sqrt(2))
        else:
            scale = gain[:, None] / math.sqrt(2 * Z)
            self.w_re = nn.Parameter(scale * torch.randn(H, Z, generator=g))
            self.w_im = nn.Parameter(scale * torch.randn(H, Z, generator=g))
        self.out = nn.Linear(2 * H, self.out_dim)

    def extra_repr(self) -> str:
        c = self.config
        return f"in={self.hidden_size}, rtu={self.rtu_size}, out={self.out_dim}, rank={c.rank}, srht={c.use_srht}"

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        dtype = dtype or torch.float32
        H = self.rtu_size
        st = {"h": torch.zeros(batch, 2, H, device=device, dtype=dtype)}
        if self.carry_traces:
            st["trace_lam"] = torch.zeros(batch, 2, H, device=device, dtype=dtype)
            w_shape = (H,) if self.config.use_srht else (H, self.hidden_size)
            st["trace_w"] = torch.zeros(batch, 2, *w_shape, device=device, dtype=dtype)
        return TensorDict(st, batch_size=[batch], device=device)

    # --- parameters as complex tensors --------------------------------------------------------
    def log_lambda(self, dtype: torch.dtype) -> Tensor:
        """``log lam = -exp(nu_log) + i exp(theta_log)`` ``[H]`` (diagonal rank)."""
        return torch.complex(-torch.exp(self.nu_log.to(dtype)), torch.exp(self.theta_log.to(dtype)))

    def input_weight(self, dtype: torch.dtype) -> Tensor:
        """Complex input weight: ``[H, Z]`` (dense) or ``[H]`` (after the SRHT)."""
        return torch.complex(self.w_re.to(dtype), self.w_im.to(dtype))

    def drive(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, T, Z]`` -> ``(u complex [B, T, H], trace drive real)``."""
        w = self.input_weight(x.dtype)
        if self.config.use_srht:
            s = srht(x, self.srht_signs, self.srht_index)
            return w * s.to(w.dtype), s
        return torch.einsum("btz,hz->bth", x.to(w.dtype), w), x

    # --- forward ----------------------------------------------------------------------------
    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        if x.shape[1] == 1 and self.diag and not self._injects(state):
            return self._step_real(x, state, resets)
        cdt = _compute_dtype(x.dtype)
        xc = x.to(cdt)
        h_in = state["h"].to(cdt)
        c0 = torch.complex(h_in[:, 0], h_in[:, 1])
        u, drive = self.drive(xc)
        new: dict[str, Tensor] = {}
        if self.diag:
            log_lam = self.log_lambda(cdt)
            if self._injects(state):
                lam, w = torch.exp(log_lam), self.input_weight(cdt)
                el0c, ew0c = _as_complex(state["trace_lam"].to(cdt)), _as_complex(state["trace_w"].to(cdt))
                c0 = inject_traces(c0, el0c, ew0c, lam, w)
            if x.shape[1] == 1:
                return self._step(x, u, drive, log_lam, c0, state, resets)
            c, _ = rtu(u, torch.exp(log_lam), initial_state=c0, resets=resets, output_final_state=False,
                       backend=self.backend)
            if self.carry_traces:
                el0 = _as_complex(state["trace_lam"].to(torch.float64))
                ew0 = _as_complex(state["trace_w"].to(torch.float64))
                # traces grow like 1 / (1 - |lam|)^2: accumulate them in float64 whatever the input dtype
                c64, c0_64 = c.to(torch.complex128), c0.to(torch.complex128)
                el, ew = rtu_final_traces(c64, c0_64, log_lam.to(torch.complex128), resets, drive.double(), el0, ew0)
                new["trace_lam"], new["trace_w"] = _as_real(el), _as_real(ew)
        else:
            lam_mat = torch.complex(self.lam_re.to(cdt), self.lam_im.to(cdt))
            c = rtu_full_chunked(u, lam_mat, c0, resets, self.config.chunk_size)
        new["h"] = _as_real(c[:, -1])
        feats = torch.cat([self.act(c.real), self.act(c.imag)], -1)
        y = nn.functional.linear(feats, self.out.weight.to(cdt), self.out.bias.to(cdt)).to(x.dtype)
        sd = state["h"].dtype
        return y, TensorDict({k: v.to(sd) for k, v in new.items()}, batch_size=state.batch_size, device=state.device)


    def _step(self, x: Tensor, u: Tensor, drive: Tensor, log_lam: Tensor, c0: Tensor, state: TensorDict,
              resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        """``T = 1``: the recurrence and the traces as a few real multiply-adds (no scan, no float64)."""
        lam = torch.exp(log_lam)
        reset = None if resets is None else resets[:, 0]
        prev = c0 if reset is None else torch.where(reset[:, None], torch.zeros_like(c0), c0)
        c = lam * prev + u[:, 0]
        sd = state["h"].dtype
        new = {"h": _as_real(c).to(sd)}
        if self.carry_traces:
            new["trace_lam"], new["trace_w"] = rtu_step_traces(prev.real, prev.imag, lam.real, lam.imag, reset,
                                                               drive[:, 0], state["trace_lam"], state["trace_w"])
        feats = torch.cat([self.act(c.real), self.act(c.imag)], -1)
        cdt = c.real.dtype
        y = nn.functional.linear(feats, self.out.weight.to(cdt), self.out.bias.to(cdt)).to(x.dtype)
        return y[:, None], TensorDict({k: v.to(sd) for k, v in new.items()}, batch_size=state.batch_size,
                                      device=state.device)


    def _injects(self, state: TensorDict) -> bool:
        """Whether this call adds the carried traces to autograd (detached incoming state, gradients wanted)."""
        return (self.carry_traces and self.config.trace_grad and torch.is_grad_enabled()
                and not state["h"].requires_grad)

    def _step_real(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        """``T = 1`` without complex tensors: real multiply-adds that ``torch.compile`` can fuse (the step path)."""
        cdt = _compute_dtype(x.dtype)
        xc = x[:, 0].to(cdt)
        mag, theta = torch.exp(-torch.exp(self.nu_log.to(cdt))), torch.exp(self.theta_log.to(cdt))
        lr, li = mag * torch.cos(theta), mag * torch.sin(theta)  # lam = exp(-e^nu + i e^theta)
        w_re, w_im = self.w_re.to(cdt), self.w_im.to(cdt)
        if self.config.use_srht:
            drive = srht(xc, self.srht_signs, self.srht_index).to(cdt)
            u_re, u_im = w_re * drive, w_im * drive
        else:
            drive = xc
            u_re, u_im = xc @ w_re.T, xc @ w_im.T
        h = state["h"].to(cdt)
        p_re, p_im = h[:, 0], h[:, 1]
        reset = None if resets is None else resets[:, 0]
        if reset is not None:
            keep = (~reset).to(cdt)[:, None]
            p_re, p_im = p_re * keep, p_im * keep
        c_re = lr * p_re - li * p_im + u_re
        c_im = lr * p_im + li * p_re + u_im
        sd = state["h"].dtype
        new = {"h": torch.stack([c_re, c_im], 1).to(sd)}
        if self.carry_traces:
            # the decay in float64 (cheap, [H]): traces sum ~1 / (1 - |lam|) terms, so its rounding would add up
            lam64 = torch.exp(-torch.exp(self.nu_log.double())), torch.exp(self.theta_log.double())
            el, ew = rtu_step_traces(p_re, p_im, lam64[0] * torch.cos(lam64[1]), lam64[0] * torch.sin(lam64[1]),
                                     reset, drive, state["trace_lam"], state["trace_w"])
            new["trace_lam"], new["trace_w"] = el.to(sd), ew.to(sd)
        feats = torch.cat([self.act(c_re), self.act(c_im)], -1)
        y = nn.functional.linear(feats, self.out.weight.to(cdt), self.out.bias.to(cdt)).to(x.dtype)
        return y[:, None], TensorDict(new, batch_size=state.batch_size, device=state.device)


def _as_complex(v: Tensor) -> Tensor:
    """``[B, 2, ...]`` real -> ``[B, ...]`` complex."""
    return torch.complex(v[:, 0], v[:, 1])


def _as_real(z: Tensor) -> Tensor:
    """``[B, ...]`` complex -> ``[B, 2, ...]`` real."""
    return torch.stack([z.real, z.imag], 1)
