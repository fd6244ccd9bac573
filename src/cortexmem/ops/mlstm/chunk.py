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
    q, k = q.reshape(B, NH, Nc, L, dk), k.reshape(B, NH, Nc, L, dk)
    v = v.reshape(B, NH, Nc, L, dv)
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

    neg_inf = torch.full((), float("-inf"), dtype=q.dtype, device=q.device)  # no host copy (CUDA graphs)
    D = torch.where(same, Fc[..., :, None] - Fc[..., None, :] + log_i[..., None, :], neg_inf)  # (.., L, L)
    D_max = D.amax(-1)  # (B, NH, Nc, L)

    # chunk summaries: contribution of the chunk's own inputs to its end state, stabilised by D_max[L-1]
    m_loc = D_max[..., -1]  # (B, NH, Nc)
    w = torch.exp(D[..., -1, :] - m_loc[..., None])  # (B, NH, Nc, L)
    C_loc = torch.einsum("bhcs,bhcsd,bhcse->bhcde", w, k, v)
    n_loc = torch.einsum("bhcs,bhcsd->bhcd", w, k)
    end_keep = None if keep is None else keep[..., -1]

    C, n, m = C0, n0, m0
    C_in, n_in, m_in = [], [], []
    for c in range(Nc):
        C_in.append(C), n_in.append(n), m_in.append(m)
        a = _initial_logw(Fc[..., c, -1], m, None if end_keep is None else end_keep[..., c])
        m_new = torch.maximum(a, m_loc[..., c])
        f = _masked_exp(a - m_new, None if end_keep is None else end_keep[..., c])
        g = torch.exp(m_loc[..., c] - m_new)
        C = f[..., None, None] * C + g[..., None, None] * C_loc[:, :, c]
        n = f[..., None] * n + g[..., None] * n_loc[:, :, c]
        m = m_new
    C_in, n_in, m_in = torch.stack(C_in, 2), torch.stack(n_in, 2), torch.stack(m_in, 2)

    a = _initial_logw(Fc, m_in[..., None], keep)  # (B, NH, Nc, L)
    m_t = torch.maximum(a, D_max)
    S = (q @ k.transpose(-1, -2)) * torch.exp(D - m_t[..., None])  # (B, NH, Nc, L, L)
    inter = _masked_exp(a - m_t, keep)
    num = S @ v + inter[..., None] * (q @ C_in)
    qn = S.sum(-1) + inter * (q @ n_in[..., None]).squeeze(-1)
    h = num / normaliser(qn, m_t)[..., None]
    return h.reshape(B, NH, Nc * L, dv)[:, :, :T], (C, n, m)


def _initial_logw(Fc: Tensor, m0: Tensor, keep: Tensor | None) -> Tensor:
    """Log-weight of the initial-state path: ``F + m0`` before any reset, ``F + 0`` (fresh ``m``) after one."""
    if keep is None:
        return Fc + m0
    return Fc + torch.where(keep, m0, torch.zeros_like(m0))


def _masked_exp(x: Tensor, keep: Tensor | None) -> Tensor:
    """``exp(x)``, zero where a reset has replaced the initial state by the (zero) fresh state."""
    e = torch.exp(x)
    return e if keep is None else torch.where(keep, e, torch.zeros_like(e))


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
