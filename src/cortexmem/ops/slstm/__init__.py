"""sLSTM recurrence: ``torch`` (loop over time, hand-written backward) and ``triton`` (CUDA, fused fwd/bwd)."""

from __future__ import annotations

import torch
from torch import Tensor

from ...ops.registry import register_backend, register_reference, select_backend
from .naive import slstm_naive, slstm_pointwise
from .scan import slstm_scan


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


def slstm_sequence(
    wx: Tensor, R: Tensor, h0: Tensor, c0: Tensor, n0: Tensor, m0: Tensor, resets: Tensor | None = None,
    forget_gate: str = "sigmoid", *, backend: str = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Same signature and result as :func:`slstm_naive`, run by the selected backend."""
    impl = select_backend("slstm", backend, device=wx.device, dtype=wx.dtype, head_dim=R.shape[-1])
    h_seq, h, c, n, m = impl.fn(wx, R, h0, c0, n0, m0, resets, forget_gate)
    return h_seq, (h, c, n, m)


__all__ = ["slstm_naive", "slstm_pointwise", "slstm_scan", "slstm_sequence", "slstm_torch"]
