"""Transformer-XL attention (Dai et al., 2019) with a rolling memory, as a loop over time (the reference).

Each query sees itself and the last ``M`` tokens of its episode (the memory of past keys/values, then the
tokens of this call), with the relative-position score ``(q + u) . k_j + (q + v) . R[delta]`` where
``delta = t - pos(j)`` in ``[0, M]``. Memory slots are valid only for tokens after the last reset: the state
counts them (``n_valid``, the valid slots are the newest ``n_valid``), so a fresh state attends to real tokens
only.
"""

from __future__ import annotations

import torch
from torch import Tensor


def xl_attention_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel: Tensor,
    u_bias: Tensor,
    v_bias: Tensor,
    k_mem: Tensor,
    v_mem: Tensor,
    n_valid: Tensor,
    resets: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``q, k, v`` ``[B, T, nh, dh]``; ``rel`` ``[M + 1, nh, dh]`` (``rel[d]`` for distance ``d``); biases
    ``[nh, dh]``; memory ``[B, M, nh, dh]`` (oldest first), ``n_valid`` int ``[B]``.

    Returns ``(out [B, T, nh, dh], k_mem, v_mem, n_valid)`` after the last step.
    """
    B, T, nh, dh = q.shape
    M = k_mem.shape[1]
    slots = torch.arange(M, device=q.device)
    valid = slots[None, :] >= M - n_valid.clamp(0, M)[:, None]  # [B, M]
    dist = torch.arange(M, -1, -1, device=q.device)  # distance of slot m is M - m; the current token 0
    outs = []
    for t in range(T):
        if resets is not None:
            valid = valid & ~resets[:, t, None]
        keys = torch.cat([k_mem, k[:, t, None]], 1)  # [B, M + 1, nh, dh]
        vals = torch.cat([v_mem, v[:, t, None]], 1)
        ok = torch.cat([valid, torch.ones(B, 1, dtype=torch.bool, device=q.device)], 1)
        qt = q[:, t]
        s = torch.einsum("bhd,bjhd->bhj", qt + u_bias, keys) + torch.einsum(
            "bhd,jhd->bhj", qt + v_bias, rel[dist]
        )
        s = s.masked_fill(~ok[:, None, :], float("-inf")) / dh**0.5
        outs.append(torch.einsum("bhj,bjhd->bhd", torch.softmax(s, -1), vals))
        k_mem, v_mem, valid = keys[:, 1:], vals[:, 1:], ok[:, 1:]
    zero = lambda m: torch.where(valid[:, :, None, None], m, torch.zeros_like(m))  # noqa: E731
    return torch.stack(outs, 1), zero(k_mem), zero(v_mem), valid.sum(1)
