"""Transformer-XL attention over a whole call at once: query blocks, resets and memory validity as masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_WINDOW_CACHE: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}


def _window_index(n: int, M: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(dist [n, n + M], outside [n, n + M])``: clamped distance ``i + M - w`` of window key ``w`` from block
    query ``i``, and whether it falls outside ``[0, M]``. Constants, cached per shape and device."""
    key = (n, M, str(device))
    hit = _WINDOW_CACHE.get(key)
    if hit is None:
        dist = torch.arange(n, device=device)[:, None] + M - torch.arange(n + M, device=device)[None, :]
        hit = (dist.clamp(0, M), (dist < 0) | (dist > M))
        if torch.is_inference_mode_enabled():  # an inference tensor could not be saved for backward later
            return hit
        if len(_WINDOW_CACHE) > 64:
            _WINDOW_CACHE.clear()
        _WINDOW_CACHE[key] = hit
    return hit


def xl_attention(q: Tensor, k: Tensor, v: Tensor, rel: Tensor, u_bias: Tensor, v_bias: Tensor, k_mem: Tensor,
                 v_mem: Tensor, n_valid: Tensor, resets: Tensor | None = None,
                 block: int = 64) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Same contract as :func:`xl_attention_naive`.

    Keys live on the extended axis ``ext = [memory (M), this call (T)]`` where index ``j`` has position
    ``j - M``. Key ``j`` is visible to query ``i`` iff ``0 <= i + M - j <= M`` and it belongs to the query's
    episode (episode ids: the running reset count for tokens, 0 for valid memory slots, -1 for invalid ones).
    Queries run in blocks of ``block``, each against its window of ``block + M`` keys; all blocks in one
    batched product (the windows are strided views of ``ext``), so the op count does not grow with ``T``.
    """
    B, T, nh, dh = q.shape
    M = k_mem.shape[1]
    dev = q.device
    n = min(block, T)
    Nb = -(-T // n)
    P, W = Nb * n, n + M
    pad = P - T
    scale = dh**-0.5
    dist, outside = _window_index(n, M, dev)

    cnt = torch.zeros(B, T, dtype=torch.int64, device=dev) if resets is None else resets.long().cumsum(1)
    mem_ep = (torch.arange(M, device=dev) >= M - n_valid.clamp(0, M)[:, None]).long() - 1  # 0 valid, -1 not
    ep = torch.cat([mem_ep, cnt], 1)  # [B, M + T]
    k_ext, v_ext = torch.cat([k_mem, k], 1), torch.cat([v_mem, v], 1)  # [B, M + T, nh, dh]
    if pad:
        # padded keys lie beyond every real query's window; padded queries (dropped) see only padded keys,
        # themselves included, so no softmax row is empty (an empty row's NaN would leak into the backward)
        q = F.pad(q, (0, 0, 0, 0, 0, pad))
        k_pad, v_pad = F.pad(k_ext, (0, 0, 0, 0, 0, pad)), F.pad(v_ext, (0, 0, 0, 0, 0, pad))
        ep_pad, q_ep = F.pad(ep, (0, pad), value=-2), F.pad(cnt, (0, pad), value=-2)
    else:
        k_pad, v_pad, ep_pad, q_ep = k_ext, v_ext, ep, cnt
    # [B, Nb, nh, n, dh] queries against [B, Nb, nh, dh, W] key windows
    qb = q.view(B, Nb, n, nh, dh).transpose(2, 3)
    kw, vw = k_pad.unfold(1, W, n), v_pad.unfold(1, W, n)
    pos = torch.matmul(qb + v_bias[:, None], rel.permute(1, 2, 0))  # [B, Nb, nh, n, M + 1]: score of distance
    pos = pos.gather(-1, dist.expand(B, Nb, nh, n, W))
    s = torch.baddbmm(
        pos.view(-1, n, W), (qb + u_bias[:, None]).reshape(-1, n, dh), kw.reshape(-1, dh, W),
        beta=scale, alpha=scale,
    ).view(B, Nb, nh, n, W)
    hidden = outside | (q_ep.view(B, Nb, n, 1) != ep_pad.unfold(1, W, n)[:, :, None])  # [B, Nb, n, W]
    p = torch.softmax(s.masked_fill(hidden[:, :, None], float("-inf")), -1)
    out = torch.matmul(p, vw.transpose(-1, -2)).transpose(2, 3).reshape(B, P, nh, dh)
    keep = ep[:, T:] == cnt[:, -1:]  # newest M ext entries in the last query's episode
    km = keep[:, :, None, None]
    return out[:, :T], k_ext[:, T:] * km, v_ext[:, T:] * km, keep.sum(1)
