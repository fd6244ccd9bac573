"""sLSTM recurrence: ``torch`` (loop over time, hand-written backward) and ``triton`` (CUDA, fused fwd/bwd)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ...ops.registry import register_backend, register_reference, select_backend
from .naive import slstm_naive, slstm_pointwise
from .recurrent import slstm_scan


def slstm_torch(
    wx: Tensor, R: Tensor, h0: Tensor, c0: Tensor, n0: Tensor, m0: Tensor,
    resets: Tensor | None = None, forget_gate: str = "sigmoid",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`slstm_scan` computed in at least fp32, outputs in ``wx``'s dtype, flat: ``(h_seq, h, c, n, m)``."""
    cdt = torch.promote_types(wx.dtype, torch.float32)
    h_seq, finals = slstm_scan(wx.to(cdt), R.to(cdt), *(s.to(cdt) for s in (h0, c0, n0, m0)),
                                resets=resets, forget_gate=forget_gate)
    return (h_seq.to(wx.dtype), *(s.to(wx.dtype) for s in finals))


def _triton(*args, **kwargs):
    from .triton import slstm_triton

    return slstm_triton(*args, **kwargs)


def _head_dim_fits(head_dim: int = 0, **_: object) -> str | None:
    limit = 64  # = triton.MAX_HEAD_DIM, not imported here: CPU-only processes may lack triton
    return None if head_dim <= limit else f"head size {head_dim} > {limit} (the four blocks would spill)"


register_backend("slstm", "torch", slstm_torch, priority=0, note="loop over time, hand-written backward (slstm_scan)")
register_backend("slstm", "triton", _triton, devices=frozenset({"cuda"}), priority=10, needs_triton=True,
                 dtypes=frozenset({torch.float32, torch.bfloat16, torch.float16}), supports=_head_dim_fits,
                 limits="head size <= 64", note="fused fwd/bwd, R resident per head, head size <= 64")


def _naive_flat(wx, R, h0, c0, n0, m0, resets=None, forget_gate="sigmoid"):
    h_seq, finals = slstm_naive(wx, R, h0, c0, n0, m0, resets=resets, forget_gate=forget_gate)
    return (h_seq, *finals)


def _doctor_inputs(device: torch.device, dtype: torch.dtype) -> tuple:
    g = torch.Generator().manual_seed(0)
    B, T, NH, dh = 3, 29, 2, 12
    H = NH * dh
    wx = torch.randn(B, T, 4, H, generator=g)
    R = torch.randn(4, NH, dh, dh, generator=g) / dh**0.5
    h0, c0, m0 = (torch.randn(B, H, generator=g) for _ in range(3))
    n0 = torch.rand(B, H, generator=g) + 0.5
    n0[0] = 0.0  # one fresh row: the empty-memory branch of the stabiliser
    r = torch.rand(B, T, generator=g) < 0.1
    return tuple(t.to(device=device, dtype=dtype) for t in (wx, R, h0, c0, n0, m0)) + (r.to(device),)


register_reference("slstm", _naive_flat, _doctor_inputs)


def slstm(
    wx: Tensor, R: Tensor, *, initial_state: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    output_final_state: bool = True, resets: Tensor | None = None, forget_gate: str = "sigmoid",
    backend: str = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor] | None]:
    """The sLSTM op in the ops' shared vocabulary (that of :func:`cortexmem.ops.gated_delta.gated_delta_rule`).

    ``wx`` ``[B, T, 4, H]`` (input part of the i, f, z, o pre-activations, bias included), ``R`` ``[4, NH, dh,
    dh]`` (``NH * dh = H``), ``initial_state`` ``(h, c, n, m)`` each ``[B, H]`` or ``None`` (the fresh, all-zero
    state), ``resets`` ``[B, T]`` -> ``(h [B, T, H], (h, c, n, m) or None)``, by the selected backend of op
    ``slstm`` (the result of :func:`slstm_naive`).
    """
    if wx.dim() != 4 or wx.shape[2] != 4:
        raise ValueError(f"slstm: wx must be [B, T, 4, H] (gates i, f, z, o), got shape {list(wx.shape)}")
    B, T, _, H = wx.shape
    if R.dim() != 4 or R.shape[0] != 4 or R.shape[1] * R.shape[2] != H or R.shape[2] != R.shape[3]:
        raise ValueError(f"slstm: R must be [4, NH, dh, dh] with NH * dh = H = {H}, got shape {list(R.shape)}")
    if initial_state is None:
        initial_state = tuple(wx.new_zeros(B, H) for _ in range(4))
    elif len(initial_state) != 4 or any(tuple(s.shape) != (B, H) for s in initial_state):
        raise ValueError(f"slstm: initial_state must be (h, c, n, m), each [B, H] = {[B, H]}, got "
                         f"{[list(s.shape) for s in initial_state]}")
    impl = select_backend("slstm", backend, device=wx.device, dtype=wx.dtype, head_dim=R.shape[-1])
    h_seq, *final = impl.fn(wx, R, *initial_state, resets, forget_gate)
    return h_seq, (tuple(final) if output_final_state else None)


def slstm_sequence(wx: Tensor, R: Tensor, h0: Tensor, c0: Tensor, n0: Tensor, m0: Tensor,
                   resets: Tensor | None = None, forget_gate: str = "sigmoid", *,
                   backend: str = "auto") -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Deprecated: :func:`slstm` with the state passed positionally."""
    warnings.warn("cortexmem.ops.slstm.slstm_sequence is deprecated and will be removed: use slstm(wx, R, "
                  "initial_state=(h, c, n, m), resets=...)", DeprecationWarning, stacklevel=2)
    return slstm(wx, R, initial_state=(h0, c0, n0, m0), resets=resets, forget_gate=forget_gate, backend=backend)


__all__ = ["slstm", "slstm_naive", "slstm_pointwise", "slstm_scan", "slstm_torch"]
