"""One RTU step of the RTRL traces on real ``[B, 2, ...]`` (real, imaginary) tensors, without complex casts.

Same update as one iteration of :func:`~cortexmem.ops.rtu.naive.rtu_naive`: ``e_lam <- lam e_lam + c_prev`` and
``e_w <- lam e_w + drive``, both with the carried trace dropped on a reset. At ``T = 1`` (stepping) the
closed form over a whole call degenerates to this, and doing it as a few fused real multiply-adds in the
state's dtype avoids the float64 complex round trip the sequence path needs for long calls.

The dense ``e_w [B, 2, H, Z]`` is by far the largest state of a stack (``H x Z`` per row), so its update is the op
``rtu_step_trace_w`` with a Triton backend: one pass over the trace instead of a handful of full-size temporaries,
and a kernel ``torch.compile`` keeps whole (inductor otherwise fuses the input's normalisation into the per-element
update and recomputes it ``H`` times).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...ops.registry import register_backend, register_reference, select_backend
from .naive import trace_w_step_naive


def trace_w_step_torch(ew0: Tensor, drive: Tensor, lam_re: Tensor, lam_im: Tensor, keep: Tensor | None) -> Tensor:
    """``e_w <- lam e_w + drive``: ``ew0 [B, 2, H, Z]``, ``drive [B, Z]``, ``lam`` parts ``[H]``, ``keep [B]``
    (0 drops the carried trace: a reset) or None. Computes in the promoted dtype of ``ew0`` and ``lam``."""
    dt = torch.promote_types(ew0.dtype, lam_re.dtype)
    lr, li = lam_re.to(dt), lam_im.to(dt)
    if keep is not None:
        k = keep.to(dt)[:, None]
        lr, li = lr * k, li * k
    else:
        lr, li = lr.expand(ew0.shape[0], -1), li.expand(ew0.shape[0], -1)
    lr, li, d = lr[..., None], li[..., None], drive.to(dt)[:, None, :]
    ew_re, ew_im = ew0[:, 0], ew0[:, 1]
    return torch.stack([torch.addcmul(d, lr, ew_re) - li * ew_im, lr * ew_im + li * ew_re], 1)


def _triton_trace_w(*args: Tensor | None) -> Tensor:
    from .triton import trace_w_step_triton

    return trace_w_step_triton(*args)


register_backend("rtu_step_trace_w", "torch", trace_w_step_torch,
                 priority=0, forward_only=True, note="full-size temporaries per step")
register_backend("rtu_step_trace_w", "triton", _triton_trace_w, devices=frozenset({"cuda"}),
                 dtypes=frozenset({torch.float32}), priority=10, needs_triton=True, forward_only=True,
                 note="one pass over the dense RTRL trace (inference: no autograd)")


def _doctor_inputs(device: torch.device, dtype: torch.dtype) -> tuple:
    g = torch.Generator().manual_seed(0)
    B, H, Z = 3, 37, 21
    ew0, drive = torch.randn(B, 2, H, Z, generator=g), torch.randn(B, Z, generator=g)
    lam = torch.polar(0.5 + 0.49 * torch.rand(H, generator=g, dtype=torch.float64),
                      torch.rand(H, generator=g, dtype=torch.float64))
    keep = (torch.rand(B, generator=g) > 0.3).to(dtype)
    return (ew0.to(device, dtype), drive.to(device, dtype), lam.real.to(device), lam.imag.to(device),
            keep.to(device))


register_reference("rtu_step_trace_w", trace_w_step_naive, _doctor_inputs)


def rtu_step_traces(
    prev_re: Tensor, prev_im: Tensor, lam_re: Tensor, lam_im: Tensor, reset: Tensor | None, drive: Tensor,
    e_lam0: Tensor, e_w0: Tensor,
) -> tuple[Tensor, Tensor]:
    """``prev`` ``[B, H]`` (real, imaginary parts of the hidden before this step, already reset), ``lam`` ``[H]``
    (parts), ``reset [B]`` bool, ``drive`` real ``[B, Z]`` (dense, ``e_w0 [B, 2, H, Z]``) or ``[B, H]`` (``e_w0
    [B, 2, H]``), ``e_lam0 [B, 2, H]``. Returns the new ``(e_lam, e_w)`` as real ``[B, 2, ...]``; a dense ``e_w``
    comes back in ``e_w0``'s dtype when no gradient is wanted (the fast backend), else in the promoted dtype."""
    dt = torch.promote_types(e_w0.dtype, lam_re.dtype)
    keep = None if reset is None else (~reset).to(dt)
    lr, li = lam_re.to(dt), lam_im.to(dt)
    if keep is not None:
        lr, li = lr * keep[:, None], li * keep[:, None]  # [B, H]: the carried trace decays to nothing on a reset
    else:
        lr, li = lr.expand(e_lam0.shape[0], -1), li.expand(e_lam0.shape[0], -1)
    el_re, el_im = e_lam0[:, 0], e_lam0[:, 1]
    e_lam = torch.stack([torch.addcmul(prev_re.to(dt), lr, el_re) - li * el_im,
                         torch.addcmul(prev_im.to(dt), lr, el_im) + li * el_re], 1)
    if e_w0.dim() == 4:
        grads = torch.is_grad_enabled() and any(t.requires_grad for t in (lam_re, lam_im, drive, e_w0))
        if not grads:
            impl = select_backend("rtu_step_trace_w", device=e_w0.device, dtype=e_w0.dtype)
            return e_lam, impl.fn(e_w0, drive, lam_re, lam_im, keep)
        return e_lam, trace_w_step_torch(e_w0, drive, lam_re, lam_im, keep)
    d = drive.to(dt)
    ew_re, ew_im = e_w0[:, 0], e_w0[:, 1]
    e_w = torch.stack([torch.addcmul(d, lr, ew_re) - li * ew_im, lr * ew_im + li * ew_re], 1)
    return e_lam, e_w
