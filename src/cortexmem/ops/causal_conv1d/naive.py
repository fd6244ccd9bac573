"""Reference causal 1-D convolution with a carried input buffer and per-step resets (a loop over time)."""

from __future__ import annotations

import torch
from torch import Tensor


def causal_conv1d_naive(
    x: Tensor, weight: Tensor, bias: Tensor | None, initial_state: Tensor, resets: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """x ``[B, T, H]``; weight ``[H, K]`` (depthwise) or ``[H_out, H, K]``; state ``[B, K-1, H]`` (oldest first).

    ``resets[b, t]`` zeroes the buffer of row ``b`` before ``x[b, t]`` is read. Returns ``(y, final_state)``.
    """
    buf = initial_state
    outs = []
    for t in range(x.shape[1]):
        if resets is not None:
            buf = torch.where(resets[:, t, None, None], torch.zeros_like(buf), buf)
        window = torch.cat([buf, x[:, t : t + 1]], dim=1)  # (B, K, H)
        if weight.dim() == 2:
            y = torch.einsum("bkh,hk->bh", window, weight)
        else:
            y = torch.einsum("bkh,ohk->bo", window, weight)
        if bias is not None:
            y = y + bias
        outs.append(y)
        buf = window[:, 1:]
    return torch.stack(outs, dim=1), buf
