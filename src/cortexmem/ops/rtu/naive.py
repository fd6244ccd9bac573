"""Recurrent Trace Unit (Elelimy et al., 2024) reference: a loop over time with RTRL eligibility traces.

Complex diagonal recurrence per channel ``j``: ``c_t = lam_j * c_{t-1} + u_t`` with ``lam = exp(-exp(nu) + i
theta)`` (decay ``|lam| < 1`` and rotation ``theta``) and drive ``u_t = W x_t`` (dense, complex ``W [H, Z]``)
or ``u_t = w * s_t`` (per channel, complex ``w [H]``, ``s_t`` the SRHT-mixed input). ``c`` is holomorphic in
``lam`` and ``W``, so the RTRL traces are the complex derivatives

    e_lam_t = dc_t/dlam  = lam * e_lam_{t-1} + c_{t-1}                 [B, H]
    e_W_t   = dc_t/dW_j. = lam * e_W_{t-1}   + x_t    (dense)         [B, H, Z]
    e_w_t   = dc_t/dw_j  = lam * e_w_{t-1}   + s_t    (per channel)   [B, H]

A reset before step ``t`` sets ``c_{t-1}``, ``e_lam_{t-1}`` and ``e_W_{t-1}`` to zero *before* they are read
(the initial state is a constant), so a reset step's trace uses the reset hidden, never the stale one.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rtu_naive(
    u: Tensor,
    lam: Tensor,
    c0: Tensor,
    resets: Tensor | None = None,
    drive: Tensor | None = None,
    e_lam0: Tensor | None = None,
    e_w0: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``u`` complex ``[B, T, H]``, ``lam`` complex ``[H]``, ``c0`` complex ``[B, H]``, ``resets`` ``[B, T]``.

    ``drive`` real ``[B, T, Z]`` (dense input weights, ``e_w0`` ``[B, H, Z]``) or ``[B, T, H]`` with ``e_w0``
    ``[B, H]`` (per-channel input weights); ``None`` skips the traces. Returns ``(c [B, T, H], e_lam_T,
    e_w_T)``.
    """
    c, el, ew = c0, e_lam0, e_w0
    dense = ew is not None and ew.dim() == 3
    outs = []
    for t in range(u.shape[1]):
        if resets is not None:
            keep = ~resets[:, t, None]
            c = torch.where(keep, c, torch.zeros_like(c))
            if drive is not None:
                el = torch.where(keep, el, torch.zeros_like(el))
                ew = torch.where(keep[..., None] if dense else keep, ew, torch.zeros_like(ew))
        if drive is not None:
            el = lam * el + c
            d = drive[:, t].to(ew.dtype)
            ew = lam[:, None] * ew + d[:, None, :] if dense else lam * ew + d
        c = lam * c + u[:, t]
        outs.append(c)
    return torch.stack(outs, 1), el, ew


def rtu_full_naive(u: Tensor, lam_mat: Tensor, c0: Tensor, resets: Tensor | None = None) -> Tensor:
    """Dense complex recurrence ``c_t = Lam c_{t-1} + u_t``: ``lam_mat`` ``[H, H]`` -> ``c`` ``[B, T, H]``."""
    c, outs = c0, []
    for t in range(u.shape[1]):
        if resets is not None:
            c = torch.where(resets[:, t, None], torch.zeros_like(c), c)
        c = c @ lam_mat.T + u[:, t]
        outs.append(c)
    return torch.stack(outs, 1)


def trace_w_step_naive(ew0: Tensor, drive: Tensor, lam_re: Tensor, lam_im: Tensor, keep: Tensor | None) -> Tensor:
    """One step of the dense trace in complex fp64, the spec of ``rtu_step_trace_w``: ``e_w <- keep lam e_w +
    drive`` with ``ew0 [B, 2, H, Z]`` (real, imaginary), ``drive [B, Z]``, ``lam [H]``, ``keep [B]`` or None."""
    ew = torch.complex(ew0[:, 0].double(), ew0[:, 1].double())
    lam = torch.complex(lam_re.double(), lam_im.double())[None, :, None]
    if keep is not None:
        lam = lam * keep.double()[:, None, None]
    out = lam * ew + drive.double()[:, None, :]
    return torch.stack([out.real, out.imag], 1).to(ew0.dtype)
