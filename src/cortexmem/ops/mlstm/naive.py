"""Reference mLSTM (xLSTM matrix memory, Beck et al. 2024) as a loop over time, per head, with per-step resets.

Per head and step (log-space gates, stabiliser ``m``)::

    m_t = max(log f_t + m_{t-1}, log i_t)
    i'_t = exp(log i_t - m_t),  f'_t = exp(log f_t + m_{t-1} - m_t)
    C_t = f'_t C_{t-1} + i'_t k_t v_t^T        (C is [d_k, d_v])
    n_t = f'_t n_{t-1} + i'_t k_t
    h_t = (q_t^T C_t) / max(|q_t^T n_t|, exp(-m_t))

``C, n`` are stored divided by ``exp(m)``, so ``h`` does not depend on ``m`` (it equals the unstabilised
``q^T C / max(|q^T n|, 1)``); ``m`` only keeps the exponentials in range. The fresh state (and the state after a
reset) is ``C = 0, n = 0, m = 0``.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: ``exp(-m)`` is evaluated with ``-m`` clipped here, so it stays finite in fp32/bf16 even when every gate is
#: strongly negative (the output is then ~0 either way; an ``inf`` there would turn gradients into NaN).
MAX_NEG_M = 80.0


def normaliser(qn: Tensor, m: Tensor) -> Tensor:
    """``max(|q^T n|, exp(-m))`` with the exponent clipped (shared by every mLSTM path)."""
    a, b = qn.abs(), torch.exp((-m).clamp(max=MAX_NEG_M))
    # where, not torch.maximum: same values, a two-op backward instead of ten (a tie's gradient goes to |q^T n|)
    return torch.where(a >= b, a, b)


def mlstm_naive(
    q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor,
    C0: Tensor, n0: Tensor, m0: Tensor, resets: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """q, k ``[B, NH, T, dk]``; v ``[B, NH, T, dv]``; log_i, log_f ``[B, NH, T]``; C0 ``[B, NH, dk, dv]``,
    n0 ``[B, NH, dk]``, m0 ``[B, NH]``; resets ``[B, T]`` -> ``(h [B, NH, T, dv], (C, n, m))``."""
    C, n, m = C0, n0, m0
    hs = []
    for t in range(q.shape[2]):
        if resets is not None:
            r = resets[:, t, None]  # (B, 1): broadcast over heads
            C = torch.where(r[..., None, None], torch.zeros_like(C), C)
            n = torch.where(r[..., None], torch.zeros_like(n), n)
            m = torch.where(r, torch.zeros_like(m), m)
        li, lf = log_i[:, :, t], log_f[:, :, t]
        m_new = torch.maximum(lf + m, li)
        i_gate = torch.exp(li - m_new)
        f_gate = torch.exp(lf + m - m_new)
        kt, vt, qt = k[:, :, t], v[:, :, t], q[:, :, t]
        C = f_gate[..., None, None] * C + i_gate[..., None, None] * (kt[..., :, None] * vt[..., None, :])
        n = f_gate[..., None] * n + i_gate[..., None] * kt
        num = torch.einsum("bhd,bhde->bhe", qt, C)
        den = normaliser((qt * n).sum(-1), m_new)
        hs.append(num / den[..., None])
        m = m_new
    return torch.stack(hs, dim=2), (C, n, m)
