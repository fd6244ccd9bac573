"""Chunkwise-parallel mLSTM: quadratic inside a chunk, recurrent across chunks, resets as masks.

Unrolling the recurrence of :func:`mlstm_naive` inside a chunk with initial state ``(C0, n0, m0)`` and
``F_t`` the sum of ``log f_u`` over ``u <= t`` since the chunk start or the last reset at or before ``t``,
output ``t`` sees

* input ``s <= t`` with log-weight ``D_ts = F_t - F_s + log i_s``, unless a reset falls in ``(s, t]``;
* the initial state with log-weight ``a_t = F_t + m0`` if no reset falls in ``[0, t]``; otherwise the fresh
  state (``C = n = 0``, ``m = 0``) put in just before the last reset: ``a_t = F_t + 0``;

and the stabiliser is ``m_t = max(a_t, max_s D_ts)`` exactly as the loop computes it. Reset handling is two
masks built from the running reset count (``same segment`` for ``D``, ``no reset yet`` for the initial state),
so there is no Python loop over time; the only loop is over chunks, to carry the state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .naive import normaliser


def mlstm_chunkwise(
    q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor,
    C0: Tensor, n0: Tensor, m0: Tensor, resets: Tensor | None = None, chunk_size: int = 64,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Same contract as :func:`mlstm_naive`; costs ``O(T * chunk_size)`` time and memory."""
    _check_shapes(q, k, v, log_i, log_f, C0, n0, m0, resets, chunk_size)
    B, NH, T, dk = q.shape
    dv = v.shape[-1]
    L = min(chunk_size, T)
    Nc = math.ceil(T / L)
    pad = Nc * L - T
    if pad:
        # padded steps keep the state unchanged: f = 1 (log 0), i = 0 (log -inf), no reset
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_f = F.pad(log_f, (0, pad))
        log_i = F.pad(log_i, (0, pad), value=float("-inf"))
        if resets is not None:
            resets = F.pad(resets, (0, pad))
    # chunks flattened into one batch axis (G = B * NH * Nc): every product below is a plain bmm
    G = B * NH * Nc
    q, k = q.reshape(G, L, dk), k.reshape(G, L, dk)
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], -1).view(G, L, dv + 1)  # n rides along as a ones column
    log_i, log_f = log_i.reshape(B, NH, Nc, L), log_f.reshape(B, NH, Nc, L)

    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    if resets is None:
        same, keep = causal, None
        Fc = log_f.cumsum(-1)  # (B, NH, Nc, L)
    else:
        count = resets.reshape(B, 1, Nc, L).to(torch.int32).cumsum(-1)
        same = causal & (count[..., :, None] == count[..., None, :])  # no reset in (s, t]
        keep = count == 0  # no reset in [0, t]: the chunk's initial state is still visible
        # log-decay summed over t's own segment only (a masked sum, not a difference of running sums), so
        # nothing before a reset reaches later steps, not even through rounding
        Fc = (same.to(log_f.dtype) @ log_f[..., None]).squeeze(-1)

    # a Python -inf: where fills it on the device (no host copy, CUDA-graph safe)
    D = torch.where(same, Fc[..., :, None] - (Fc - log_i)[..., None, :], float("-inf"))  # (.., L, L)
    D_max = D.amax(-1)  # (B, NH, Nc, L)

    # chunk summaries: contribution of the chunk's own inputs to its end state, stabilised by D_max[L-1]; the
    # normaliser n rides along as an extra value column of ones, so C and n share every product below
    m_loc = D_max[..., -1]  # (B, NH, Nc)
    w = torch.exp(D[..., -1, :] - m_loc[..., None])  # (B, NH, Nc, L)
    Cn_loc = torch.bmm((k * w.view(G, L, 1)).transpose(1, 2), v1).view(B, NH, Nc, dk, dv + 1)

    # the carry loop on [B, NH, 1, 1]-shaped scalars and the stacked (C | n): a few ops per chunk
    Cn = torch.cat([C0, n0[..., None]], -1)
    m = m0[..., None, None]
    ends = Fc[..., -1, None, None].unbind(2)
    locs = m_loc[..., None, None].unbind(2)
    Cn_locs = Cn_loc.unbind(2)
    end_keeps = [None] * Nc if keep is None else keep[..., -1, None, None].unbind(2)
    Cn_in, m_in = [], []
    for c in range(Nc):
        Cn_in.append(Cn), m_in.append(m)
        a = _initial_logw(ends[c], m, end_keeps[c])
        m_new = _max(a, locs[c])
        Cn = torch.addcmul(_masked_exp(a - m_new, end_keeps[c]) * Cn, torch.exp(locs[c] - m_new), Cn_locs[c])
        m = m_new
    Cn_in, m_in = torch.stack(Cn_in, 2), torch.stack(m_in, 2).view(B, NH, Nc, 1)

    a = _initial_logw(Fc, m_in, keep)  # (B, NH, Nc, L)
    m_t = _max(a, D_max)
    S = torch.bmm(q, k.transpose(1, 2)).view(B, NH, Nc, L, L) * torch.exp(D - m_t[..., None])
    inter = _masked_exp(a - m_t, keep)
    # [S v | S 1] + inter * q (C | n): numerator and normaliser in the same products
    num = torch.baddbmm(torch.bmm(S.view(G, L, L), v1), q * inter.view(G, L, 1), Cn_in.view(G, dk, dv + 1))
    num = num.view(B, NH, Nc, L, dv + 1)
    h = num[..., :dv] / normaliser(num[..., dv], m_t)[..., None]
    return h.reshape(B, NH, Nc * L, dv)[:, :, :T], (Cn[..., :dv], Cn[..., dv], m.view(B, NH))


def _max(a: Tensor, b: Tensor) -> Tensor:
    """``max(a, b)`` whose backward is two ``where`` (``torch.maximum``'s splits ties: ten ops per call).

    At a tie both branches hold the same value; the gradient then goes to ``a``, a valid subgradient.
    """
    return torch.where(a >= b, a, b)


def _initial_logw(Fc: Tensor, m0: Tensor, keep: Tensor | None) -> Tensor:
    """Log-weight of the initial-state path: ``F + m0`` before any reset, ``F + 0`` (fresh ``m``) after one."""
    if keep is None:
        return Fc + m0
    return Fc + torch.where(keep, m0, 0.0)


def _masked_exp(x: Tensor, keep: Tensor | None) -> Tensor:
    """``exp(x)``, zero where a reset has replaced the initial state by the (zero) fresh state."""
    e = torch.exp(x)
    return e if keep is None else torch.where(keep, e, 0.0)


def _check_shapes(q, k, v, log_i, log_f, C0, n0, m0, resets, chunk_size) -> None:
    if q.dim() != 4:
        raise ValueError(f"mlstm: q must be [B, NH, T, dk], got shape {tuple(q.shape)}")
    B, NH, T, dk = q.shape
    dv = v.shape[-1] if v.dim() == 4 else -1
    expected = {
        "k": (k, (B, NH, T, dk)), "v": (v, (B, NH, T, dv)), "log_i": (log_i, (B, NH, T)),
        "log_f": (log_f, (B, NH, T)), "C0": (C0, (B, NH, dk, dv)), "n0": (n0, (B, NH, dk)), "m0": (m0, (B, NH)),
    }
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"mlstm: {name} must have shape {list(shape)}, got {list(t.shape)}")
    if resets is not None and (tuple(resets.shape) != (B, T) or resets.dtype != torch.bool):
        raise ValueError(f"mlstm: resets must be bool [B, T]=[{B}, {T}], got {resets.dtype} {list(resets.shape)}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"mlstm: chunk_size must be a positive int, got {chunk_size!r}")
