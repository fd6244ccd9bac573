"""AGaLiTe (Pramanik et al., 2023) recurrence as a loop over time (the reference).

Gated linear attention per head with an expanded key feature ``phi(k)`` (``F = d_k * eta`` features) keeps
``C_t = ((1 - beta_t) (1 - gamma_t)^T) * C_{t-1} + (beta_t v_t)(gamma_t phi(k_t))^T``; AGaLiTe replaces the
``d_v x F`` matrix by ``r`` oscillatory rank-one terms, with ``c_j(tau) = cos(2 pi j (tau + 1) / r)``:

    vt_j <- (1 - beta_t)  * vt_j + c_j(tau_t) * beta_t * v_t          [r, d_v]
    kt_j <- (1 - gamma_t) * kt_j + c_j(tau_t) * gamma_t * phi(k_t)    [r, F]
    s    <- (1 - gamma_t) * s    + gamma_t * phi(k_t)                 [F]
    o_t  = (2 / r) sum_j vt_j (kt_j . phi(q_t)) / (s . phi(q_t) + eps)

Since ``sum_j c_j(a) c_j(b) = (r/2) ([a = b] + [a + b + 2 = 0])`` (mod ``r``), the sum of outer products
approximates ``C_t``, exactly while ``tau < r / 2 - 1``. ``tau`` counts steps since the episode start
(state ``tau``); a reset zeroes ``vt, kt, s`` and ``tau`` before the step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def oscillators(tau: Tensor, r: int) -> Tensor:
    """``cos(2 pi j (tau + 1) / r)``, ``j = 1..r``: int ``[...]`` -> ``[..., r]`` (phase taken mod ``r``)."""
    j = torch.arange(1, r + 1, device=tau.device)
    return torch.cos(2 * math.pi * (((tau[..., None] + 1) * j) % r).double() / r)


def agalite_naive(
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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``phi_q, phi_k, gamma_logit`` ``[B, T, nh, F]``; ``v, beta_logit`` ``[B, T, nh, dv]``;
    ``vt0`` ``[B, nh, r, dv]``, ``kt0`` ``[B, nh, r, F]``, ``s0`` ``[B, nh, F]``, ``tau0`` int ``[B]``.

    Returns ``(o [B, T, nh, dv], vt, kt, s, tau)``.
    """
    r = vt0.shape[2]
    vt, kt, s, tau = vt0, kt0, s0, tau0
    outs = []
    for t in range(phi_q.shape[1]):
        if resets is not None:
            rt = resets[:, t]
            m = rt[:, None, None, None]
            vt, kt = torch.where(m, 0.0, vt), torch.where(m, 0.0, kt)
            s, tau = torch.where(rt[:, None, None], 0.0, s), torch.where(rt, 0, tau)
        osc = oscillators(tau, r).to(v.dtype)[:, None, :, None]  # [B, 1, r, 1]
        beta, gamma = torch.sigmoid(beta_logit[:, t]), torch.sigmoid(gamma_logit[:, t])
        vt = (1 - beta)[:, :, None] * vt + osc * (beta * v[:, t])[:, :, None]
        kt = (1 - gamma)[:, :, None] * kt + osc * (gamma * phi_k[:, t])[:, :, None]
        s = (1 - gamma) * s + gamma * phi_k[:, t]
        q = phi_q[:, t]
        num = torch.einsum("bhjd,bhj->bhd", vt, torch.einsum("bhjf,bhf->bhj", kt, q)) * (2 / r)
        outs.append(num / ((s * q).sum(-1, keepdim=True) + eps))
        tau = tau + 1
    return torch.stack(outs, 1), vt, kt, s, tau
