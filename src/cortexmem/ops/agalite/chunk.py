"""AGaLiTe over a whole call without a loop over time: chunked closed-form gated scans, resets as masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .naive import oscillators


def _steps_since_reset(tau0: Tensor, resets: Tensor | None, T: int) -> Tensor:
    """``tau_t`` ``[B, T]``: steps since the episode start (``tau0 + t`` until the first reset)."""
    t = torch.arange(T, device=tau0.device)[None]
    if resets is None:
        return tau0[:, None] + t
    last = torch.where(resets, t, -1).cummax(1).values
    return torch.where(last >= 0, t - last, tau0[:, None] + t)


def gated_scan(log_a: Tensor, b: Tensor, x0: Tensor, resets: Tensor | None, chunk: int) -> Tensor:
    """``x_t = exp(log_a_t) * x_{t-1} + b_t`` (``x_{t-1} := 0`` at resets) for every ``t``.

    ``log_a`` ``[B, T, *C]`` (<= 0) is shared by the ``K`` sequences ``b`` ``[B, T, K, *C]`` (start ``x0``
    ``[B, K, *C]``) -> ``[B, T, K, *C]``. Per chunk ``x_t = sum_s exp(A_t - A_s) b_s + exp(A_t) x0``, ``A``
    the in-chunk cumulative ``log_a`` (only ``s <= t`` exponents: never positive), masked across resets.
    """
    B, T = log_a.shape[:2]
    outs, x = [], x0
    for a in range(0, T, chunk):
        la = log_a[:, a : a + chunk]
        L = la.shape[1]
        cum = la.cumsum(1)  # [B, L, *C]
        diff = cum[:, :, None] - cum[:, None, :]  # [B, t, s, *C]: sum of log_a over (s, t]
        idx = torch.arange(L, device=la.device)
        keep = (idx[:, None] >= idx[None, :])[None].expand(B, L, L)
        fresh = None
        if resets is not None:
            cnt = resets[:, a : a + chunk].long().cumsum(1)
            keep = keep & (cnt[:, :, None] == cnt[:, None, :])
            fresh = cnt == 0
        kshape = (B, L, L) + (1,) * (diff.dim() - 3)
        w = torch.where(keep.view(kshape), torch.exp(torch.where(keep.view(kshape), diff, 0.0)), 0.0)
        xs = torch.einsum("bts...,bsk...->btk...", w, b[:, a : a + chunk])
        carry = torch.exp(cum)
        if fresh is not None:
            carry = torch.where(fresh.view(B, L, *([1] * (cum.dim() - 2))), carry, 0.0)
        xs = xs + carry[:, :, None] * x[:, None]
        outs.append(xs)
        x = xs[:, -1]
    return torch.cat(outs, 1)


def agalite_chunked(
    phi_q: Tensor,
    phi_k: Tensor,
    v: Tensor,
    beta_logit: Tensor,
    gamma_logit: Tensor,
    vt0: Tensor,
    kt0: Tensor,
    s0: Tensor,
    tau0: Tensor,
    resets: Tensor | None = None,
    eps: float = 1e-5,
    chunk: int = 32,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Same contract as :func:`agalite_naive`."""
    B, T = v.shape[:2]
    r = vt0.shape[2]
    tau = _steps_since_reset(tau0, resets, T)
    osc = oscillators(tau, r).to(v.dtype)  # [B, T, r]
    beta, gamma = torch.sigmoid(beta_logit), torch.sigmoid(gamma_logit)
    # log(1 - sigmoid(z)) = -softplus(z): stable for saturated gates
    la_v, la_k = -F.softplus(beta_logit), -F.softplus(gamma_logit)
    bv = osc[:, :, :, None, None] * (beta * v)[:, :, None]  # [B, T, r, nh, dv]
    gk = gamma * phi_k
    bk = torch.cat([gk[:, :, None], osc[:, :, :, None, None] * gk[:, :, None]], 2)  # [B, T, 1 + r, nh, F]
    xv = gated_scan(la_v, bv, vt0.transpose(1, 2), resets, chunk)  # [B, T, r, nh, dv]
    xk = gated_scan(la_k, bk, torch.cat([s0[:, None], kt0.transpose(1, 2)], 1), resets, chunk)
    s_all, kt_all = xk[:, :, 0], xk[:, :, 1:]
    score = torch.einsum("btjhf,bthf->btjh", kt_all, phi_q)
    num = torch.einsum("btjhd,btjh->bthd", xv, score) * (2 / r)
    o = num / ((s_all * phi_q).sum(-1, keepdim=True) + eps)
    return o, xv[:, -1].transpose(1, 2), kt_all[:, -1].transpose(1, 2), s_all[:, -1], tau[:, -1] + 1
