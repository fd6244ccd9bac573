"""Chunkwise-parallel gated delta rule (WY / UT transform), same contract as :func:`gated_delta_rule_naive`.

Inside a chunk of ``C`` steps, with ``gamma_i = g_1 + ... + g_i`` (log decay since the chunk start) and
``S_0`` the state entering the chunk, the pseudo-values ``u_i = b_i (v_i - a_i S_{i-1}^T k_i)`` satisfy
the unit lower triangular system ``(I + A) U = diag(b) V - diag(b e^gamma) K S_0`` with
``A_ij = b_i e^(gamma_i - gamma_j) k_i.k_j`` for ``j < i`` (the UT transform). Then
``o_i = e^gamma_i S_0^T q_i + sum_{j<=i} e^(gamma_i - gamma_j) (q_i.k_j) u_j`` and
``S_C = e^gamma_C S_0 + sum_j e^(gamma_C - gamma_j) k_j u_j^T``. Only differences ``gamma_i - gamma_j`` with
``j <= i`` are exponentiated, so every factor is in ``[0, 1]`` (log-space, stable for any decay).

A reset at ``t`` is ``g_t = -inf``: every term whose decay path crosses ``t`` (pairs ``j < t <= i`` and the
``S_0`` terms of ``i >= t``) is masked exactly, so resets inside a chunk need no special chunk boundaries.
The intra-chunk work of all chunks runs in one batch; only the ``S`` recurrence loops, once per chunk, and the
outputs are read in one batch from the stacked chunk-entry states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_gated_delta_inputs


def chunk_gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                           initial_state: Tensor | None = None, output_final_state: bool = True,
                           resets: Tensor | None = None, *, chunk_size: int = 64,
                           check_decay: bool = True) -> tuple[Tensor, Tensor | None]:
    """q, k ``[B, T, NH, Dk]``; v ``[B, T, NH, Dv]``; g (log a), beta ``[B, T, NH]``; S ``[B, NH, Dk, Dv]``.
    The signature every ``gated_delta`` backend shares (the registry calls them positionally up to ``resets``).

    Returns ``(o [B, T, NH, Dv], final_state or None)``; half precision inputs are computed in float32.
    """
    check_gated_delta_inputs(q, k, v, g, beta, initial_state, resets, check_decay)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    out_dtype = v.dtype
    dt = torch.float32 if v.dtype in (torch.float16, torch.bfloat16) else v.dtype
    B, T, NH, Dk = k.shape
    Dv = v.shape[-1]
    C = min(chunk_size, T)
    N = -(-T // C)
    q, k, decay, decay_in, U, W = chunk_terms(q, k, v, g, beta, resets, C, dt)
    # chunk axis first and contiguous: the recurrence below reads one chunk per step without copies
    U, W = (t.movedim(2, 0).contiguous() for t in (U, W))  # u = U - W S_0
    decay_out = decay[..., -1, :]  # e^(gamma_C - gamma_j), (B, NH, N, C)
    k_out = (k * decay_out[..., None]).transpose(-1, -2).movedim(2, 0).contiguous()  # (N, B, NH, Dk, C)
    decay_chunk = decay_in[..., -1].movedim(2, 0)[..., None, None]  # e^gamma_C, (N, B, NH, 1, 1)

    S = initial_state
    S = torch.zeros(B, NH, Dk, Dv, dtype=dt, device=k.device) if S is None else S.to(dt)
    starts, us = [], []
    for n in range(N):
        u = U[n] - W[n] @ S
        starts.append(S)
        us.append(u)
        S = decay_chunk[n] * S + k_out[n] @ u
    S_in = torch.stack(starts, dim=2)  # (B, NH, N, Dk, Dv): state entering each chunk
    u = torch.stack(us, dim=2)  # (B, NH, N, C, Dv)
    P = (q @ k.transpose(-1, -2)) * decay  # intra-chunk read-out weights, (B, NH, N, C, C)
    o = (q * decay_in[..., None]) @ S_in + P @ u
    o = o.reshape(B, NH, N * C, Dv)[:, :, :T].transpose(1, 2)
    return o.to(out_dtype), (S.to(out_dtype) if output_final_state else None)


def chunk_terms(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, resets: Tensor | None, C: int, dt: torch.dtype
) -> tuple[Tensor, ...]:
    """Per-chunk terms, all ``(B, NH, N, C, ...)`` in ``dt``: ``q, k, decay [.., C, C], decay_in [.., C], U, W``.

    ``T`` is zero-padded to ``N * C`` (padded steps have k = v = q = 0, b = 0, g = 0: they leave S untouched);
    ``decay`` is ``e^(gamma_i - gamma_j)`` on connected pairs (0 elsewhere), ``decay_in`` is ``e^gamma_i`` while
    still connected to the chunk-entry state, and the chunk's pseudo-values are ``u = U - W S_0``.
    """
    B, T, NH, _ = k.shape
    Dv = v.shape[-1]
    N = -(-T // C)
    pad = N * C - T

    def heads(x: Tensor) -> Tensor:
        x = x.to(dt).transpose(1, 2)
        x = F.pad(x, (0, 0, 0, pad)) if x.dim() == 4 else F.pad(x, (0, pad))
        return x.reshape(B, NH, N, C, *x.shape[3:])

    q, k, v, g, beta = heads(q), heads(k), heads(v), heads(g), heads(beta)
    if resets is None:
        r = torch.zeros(B, N, C, dtype=torch.bool, device=k.device)
    else:
        r = F.pad(resets.to(torch.int8), (0, pad)).reshape(B, N, C) != 0
    cnt = r.cumsum(-1)  # segment id inside the chunk; 0 = still connected to S_0
    cnt = cnt[:, None]  # broadcast over heads
    same = cnt[..., :, None] == cnt[..., None, :]  # (B, 1, N, C, C)
    causal = torch.ones(C, C, dtype=torch.bool, device=k.device).tril()
    connected = same & causal  # j <= i with no reset in (j, i]
    from_s0 = cnt == 0  # (B, 1, N, C)

    gamma = torch.where(r[:, None], torch.zeros_like(g), g).cumsum(-1)  # (B, NH, N, C)
    diff = gamma[..., :, None] - gamma[..., None, :]
    decay = torch.where(connected, diff, torch.full_like(diff, float("-inf"))).exp()  # e^(gamma_i - gamma_j)
    decay_in = torch.where(from_s0, gamma, torch.full_like(gamma, float("-inf"))).exp()  # e^gamma_i

    eye = torch.eye(C, dtype=dt, device=k.device)
    A = (k @ k.transpose(-1, -2)) * decay * beta[..., :, None]
    L = A.tril(-1) + eye  # I + A, unit lower triangular
    rhs = torch.cat([beta[..., None] * v, (beta * decay_in)[..., None] * k], dim=-1)
    UW = torch.linalg.solve_triangular(L, rhs, upper=False, unitriangular=True)
    return q, k, decay, decay_in, UW[..., :Dv], UW[..., Dv:]
