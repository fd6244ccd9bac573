"""Causal 1-D convolution over a whole sequence at once (no loop over time), resets as masks."""

from __future__ import annotations

import torch
from torch import Tensor


def reset_counts(resets: Tensor, k1: int) -> Tensor:
    """Running reset count over the extended sequence (``k1`` buffer slots at 0, then ``cumsum(resets)``)."""
    zeros = torch.zeros(resets.shape[0], k1, dtype=torch.int32, device=resets.device)
    return torch.cat([zeros, resets.to(torch.int32).cumsum(1, dtype=torch.int32)], dim=1).contiguous()


def final_buffer(x: Tensor, initial_state: Tensor, count: Tensor | None) -> Tensor:
    """The last ``K - 1`` inputs, zeroed where they precede the row's last reset."""
    T, K1 = x.shape[1], initial_state.shape[1]
    final = torch.cat([initial_state.to(x.dtype), x], dim=1)[:, T:]
    if count is not None and K1 > 0:
        keep = count[:, T:] == count[:, -1:]
        final = final * keep[:, :, None].to(final.dtype)
    return final


def causal_conv1d_torch(
    x: Tensor, weight: Tensor, bias: Tensor | None, initial_state: Tensor, resets: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`causal_conv1d_naive`, computed with one unfold.

    An input at time ``s`` (buffer entries count as ``s < 0``) is visible to the output at ``t >= s`` iff no reset
    falls in ``(s, t]``; with ``c`` the running count of resets, that is ``c[t] == c[s]`` (``c = 0`` in the buffer).
    """
    K1 = initial_state.shape[1]
    K = K1 + 1
    ext = torch.cat([initial_state.to(x.dtype), x], dim=1)  # (B, K-1+T, H)
    windows = ext.unfold(1, K, 1)  # (B, T, H, K): windows[:, t, :, j] = ext[:, t + j]
    count = None
    if resets is not None:
        count = reset_counts(resets, K1)  # (B, K-1+T)
        visible = count.unfold(1, K, 1) == count[:, K1:, None]  # (B, T, K)
        windows = windows * visible[:, :, None, :].to(x.dtype)
    if weight.dim() == 2:  # depthwise: a product and a sum (an einsum would permute and copy around a bmm)
        y = (windows * weight).sum(-1)
    else:
        y = torch.einsum("bthk,ohk->bto", windows, weight)
    if bias is not None:
        y = y + bias
    return y, final_buffer(x, initial_state, count)
