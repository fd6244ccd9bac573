"""Reference sLSTM (xLSTM scalar memory, Beck et al. 2024) as a loop over time with per-step resets.

Per unit, with pre-activations ``pre = W x_t + b + R h_{t-1}`` (``R`` block-diagonal, one block per head)
in gate order ``i, f, z, o``::

    m_t = max(log f_t + m_{t-1}, log i_t)             (log i = i~, log f = logsigmoid(f~) or f~)
    c_t = f'_t c_{t-1} + i'_t tanh(z~_t),  n_t = f'_t n_{t-1} + i'_t
    h_t = sigmoid(o~_t) * c_t / n_t

with ``i' = exp(log i - m_t)``, ``f' = exp(log f + m_{t-1} - m_t)``. ``c, n`` are stored divided by
``exp(m)``; ``h`` does not depend on ``m``. The fresh state (and the state after a reset) is all zeros. An
empty memory (``n = 0``) carries nothing, so it is left out of the stabiliser (``m_t = log i_t``); from a
fresh state this keeps ``n_t >= 1``, so ``c / n`` never divides by an underflowed ``n``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GATES = ("i", "f", "z", "o")


def slstm_pointwise(
    pre: Tensor, c: Tensor, n: Tensor, m: Tensor, forget_gate: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step from pre-activations ``pre [B, 4, H]`` (order i, f, z, o) -> ``(h, c, n, m)``, each ``[B, H]``."""
    i_raw, f_raw, z_raw, o_raw = pre.unbind(1)
    log_f = F.logsigmoid(f_raw) if forget_gate == "sigmoid" else f_raw
    prev = torch.where(n == 0, torch.full_like(m, float("-inf")), log_f + m)
    m_new = torch.maximum(prev, i_raw)
    i_gate = torch.exp(i_raw - m_new)
    f_gate = torch.exp(prev - m_new)
    c = f_gate * c + i_gate * torch.tanh(z_raw)
    n = f_gate * n + i_gate
    h = torch.sigmoid(o_raw) * c / n
    return h, c, n, m_new


def slstm_naive(
    wx: Tensor, R: Tensor, h0: Tensor, c0: Tensor, n0: Tensor, m0: Tensor,
    resets: Tensor | None = None, forget_gate: str = "sigmoid",
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """wx ``[B, T, 4, H]`` (input part of the pre-activations, bias included); R ``[4, NH, dh, dh]``;
    h0, c0, n0, m0 ``[B, H]``; resets ``[B, T]`` -> ``(h [B, T, H], (h, c, n, m))``."""
    B, T, _, H = wx.shape
    NH, dh = R.shape[1], R.shape[2]
    h, c, n, m = h0, c0, n0, m0
    hs = []
    for t in range(T):
        if resets is not None:
            r = resets[:, t, None]
            h, c, n, m = (torch.where(r, torch.zeros_like(s), s) for s in (h, c, n, m))
        rh = torch.einsum("bkd,gkde->bgke", h.reshape(B, NH, dh), R).reshape(B, 4, H)
        h, c, n, m = slstm_pointwise(wx[:, t] + rh, c, n, m, forget_gate)
        hs.append(h)
    return torch.stack(hs, dim=1), (h, c, n, m)
