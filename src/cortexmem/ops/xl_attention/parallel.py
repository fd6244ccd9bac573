"""Transformer-XL attention over a whole call at once: query blocks, resets and memory validity as masks."""

from __future__ import annotations

import torch
from torch import Tensor


def xl_attention(
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
    block: int = 64,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Same contract as :func:`xl_attention_naive`.

    Keys live on the extended axis ``ext = [memory (M), this call (T)]`` where index ``j`` has position
    ``j - M``. Key ``j`` is visible to query ``i`` iff ``0 <= i + M - j <= M`` and it belongs to the query's
    episode: a memory slot needs to be valid and no reset in ``[0, i]``; a token ``p`` of this call needs the
    same reset count as ``i``. Queries run in blocks of ``block``, each against its ``block + M`` keys.
    """
    B, T, nh, dh = q.shape
    M = k_mem.shape[1]
    dev = q.device
    n_valid = n_valid.clamp(0, M)
    cnt = torch.zeros(B, T, dtype=torch.int64, device=dev) if resets is None else resets.long().cumsum(1)
    # episode id per ext position: memory slots get -1 (valid, reached only while cnt == 0) or -2 (never)
    mem_ep = torch.where(torch.arange(M, device=dev)[None] >= M - n_valid[:, None], -1, -2)
    ep = torch.cat([mem_ep, cnt], 1)  # [B, M + T]
    q_ep = torch.where(cnt == 0, -1, cnt)  # a query with no reset yet is in the memory's episode
    ep = torch.where(ep >= 0, torch.where(ep == 0, -1, ep), ep)  # tokens before the first reset join it too
    k_ext, v_ext = torch.cat([k_mem, k], 1), torch.cat([v_mem, v], 1)
    qu, qv = q + u_bias, q + v_bias
    pos = torch.einsum("bihd,jhd->bhij", qv, rel)  # [B, nh, T, M + 1]: score of distance j
    outs = []
    for a in range(0, T, block):
        e = min(a + block, T)
        n = e - a
        ks, vs = k_ext[:, a : e + M], v_ext[:, a : e + M]  # keys of ext positions a .. e + M - 1
        dist = (torch.arange(n, device=dev)[:, None] + M) - torch.arange(n + M, device=dev)[
            None, :
        ]  # [n, n+M]
        in_window = (dist >= 0) & (dist <= M)
        s = torch.einsum("bihd,bjhd->bhij", qu[:, a:e], ks)
        s = s + pos[:, :, a:e].gather(-1, dist.clamp(0, M)[None, None].expand(B, nh, n, n + M))
        visible = in_window[None] & (q_ep[:, a:e, None] == ep[:, None, a : e + M])  # [B, n, n + M]
        s = s.masked_fill(~visible[:, None], float("-inf")) / dh**0.5
        outs.append(torch.einsum("bhij,bjhd->bihd", torch.softmax(s, -1), vs))
    keep = ep[:, T:] == q_ep[:, -1:]  # newest M ext entries in the last query's episode
    zero = lambda m: torch.where(keep[:, :, None, None], m, torch.zeros_like(m))  # noqa: E731
    return torch.cat(outs, 1), zero(k_ext[:, T:]), zero(v_ext[:, T:]), keep.sum(1)
