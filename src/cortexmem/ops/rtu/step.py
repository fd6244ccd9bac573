"""One RTU step of the RTRL traces on real ``[B, 2, ...]`` (real, imaginary) tensors, without complex casts.

Same update as one iteration of :func:`~cortexmem.ops.rtu.naive.rtu_naive`: ``e_lam <- lam e_lam + c_prev`` and
``e_w <- lam e_w + drive``, both with the carried trace dropped on a reset. At ``T = 1`` (stepping) the
closed form over a whole call degenerates to this, and doing it as a few fused real multiply-adds in the
state's dtype avoids the float64 complex round trip the sequence path needs for long calls.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rtu_step_traces(
    prev_re: Tensor, prev_im: Tensor, lam_re: Tensor, lam_im: Tensor, reset: Tensor | None, drive: Tensor,
    e_lam0: Tensor, e_w0: Tensor,
) -> tuple[Tensor, Tensor]:
    """``prev`` ``[B, H]`` (real, imaginary parts of the hidden before this step, already reset), ``lam`` ``[H]``
    (parts), ``reset [B]`` bool, ``drive`` real ``[B, Z]`` (dense, ``e_w0 [B, 2, H, Z]``) or ``[B, H]`` (``e_w0
    [B, 2, H]``), ``e_lam0 [B, 2, H]``. Returns the new ``(e_lam, e_w)`` as real ``[B, 2, ...]``."""
    dt = torch.promote_types(e_w0.dtype, lam_re.dtype)
    lr, li = lam_re.to(dt), lam_im.to(dt)
    if reset is not None:
        keep = (~reset).to(dt)[:, None]
        lr, li = lr * keep, li * keep  # [B, H]: the carried trace decays to nothing on a reset
    else:
        lr, li = lr.expand(e_lam0.shape[0], -1), li.expand(e_lam0.shape[0], -1)
    el_re, el_im = e_lam0[:, 0], e_lam0[:, 1]
    e_lam = torch.stack([torch.addcmul(prev_re.to(dt), lr, el_re) - li * el_im,
                         torch.addcmul(prev_im.to(dt), lr, el_im) + li * el_re], 1)
    d = drive.to(dt)
    if e_w0.dim() == 4:
        lr, li, d = lr[..., None], li[..., None], d[:, None, :]
    ew_re, ew_im = e_w0[:, 0], e_w0[:, 1]
    e_w = torch.stack([torch.addcmul(d, lr, ew_re) - li * ew_im, lr * ew_im + li * ew_re], 1)
    return e_lam, e_w
