"""AGaLiTe over a whole call without a loop over time: chunked parallel (Hillis-Steele) gated scans, resets as masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .naive import oscillators


def _steps_since_reset(tau0: Tensor, resets: Tensor | None, T: int) -> Tensor:
    """``tau_t`` ``[B, T]``: steps since the episode start (``tau0 + t`` until the first reset)."""
    t = torch.arange(T, device=tau0.device)[None]
    if resets is None:
        return tau0[:, None] + t
    last = torch.where(resets, t, -1).cummax(1).values
    return torch.where(last >= 0, t - last, tau0[:, None] + t)


def _scan(a: Tensor, b: Tensor, x0: Tensor, chunk: int, reverse: bool = False) -> Tensor:
    """No-graph ``x_t = a_t x_{t-1} + b_t``: ``a [B, T, 1, *C]``, ``b [B, T, K, *C]``, ``x0 [B, K, *C]``.

    All chunks at once: a Hillis-Steele scan inside each chunk (``log2(chunk)`` elementwise levels, only
    products of gates in ``[0, 1]``: it never overflows, nothing quadratic in the chunk length), then the
    chunk-start carries (a short loop over chunks) added with the in-chunk gate products. ``reverse`` runs
    ``x_t = a_t x_{t+1} + b_t`` from the end.
    """
    B, T = b.shape[:2]
    L = max(1, min(chunk, T))
    n = -(-T // L)
    pad = n * L - T
    # scratch padded with gate 1, drive 0 beyond the far end (after the last step, or before the first when
    # reversed): the padding never reaches a real step
    bc = b.new_empty(B, n * L, *b.shape[2:])
    ac = a.new_empty(B, n * L, *a.shape[2:])
    real = slice(pad, None) if reverse else slice(0, T)
    bc[:, real], ac[:, real] = b, a
    if pad:
        far = slice(0, pad) if reverse else slice(T, None)
        bc[:, far], ac[:, far] = 0.0, 1.0
    bc, ac = bc.unflatten(1, (n, L)), ac.unflatten(1, (n, L))
    d = 1
    while d < L:
        # right-hand sides are materialised before the in-place writes: reads see the previous level
        to, frm = (slice(None, -d), slice(d, None)) if reverse else (slice(d, None), slice(None, -d))
        bc[:, :, to] += ac[:, :, to] * bc[:, :, frm]
        ac[:, :, to] *= ac[:, :, frm].clone()
        d *= 2
    carry = [x0]  # state entering each chunk, in scan order
    order = range(n - 1, 0, -1) if reverse else range(n - 1)
    edge = 0 if reverse else -1
    for c in order:
        carry.append(bc[:, c, edge] + ac[:, c, edge] * carry[-1])
    carries = torch.stack(carry[::-1] if reverse else carry, 1)
    bc += ac * carries[:, :, None]
    return bc.flatten(1, 2)[:, real]


class _GatedScan(torch.autograd.Function):
    """Linear scan whose backward is the reversed scan: saves only the gates, the start and the outputs."""

    @staticmethod
    def forward(ctx, log_a: Tensor, b: Tensor, x0: Tensor, keep: Tensor | None, chunk: int) -> Tensor:
        a = torch.exp(log_a)[:, :, None]  # [B, T, 1, *C], shared by the K sequences
        if keep is not None:  # x_{t-1} := 0 at a reset: a zero gate
            a = a * keep.view(*keep.shape, *([1] * (a.dim() - 2))).to(a.dtype)
        x = _scan(a, b, x0, chunk)
        ctx.save_for_backward(a, x0, x)
        ctx.chunk = chunk
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, gx: Tensor) -> tuple[Tensor | None, ...]:
        a, x0, x = ctx.saved_tensors
        # g_t = dL/dx_t + a_{t+1} g_{t+1}: the same scan run backwards in time
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], 1)
        g = _scan(a_next, gx, torch.zeros_like(x0), ctx.chunk, reverse=True)
        g_la = None
        if ctx.needs_input_grad[0]:  # dL/dlog_a_t = a_t sum_k g_t x_{t-1}
            ga = torch.zeros_like(a[:, :, 0])
            for k in range(x.shape[2]):  # one sequence at a time: no [B, T, K, *C] product
                ga[:, 0] += g[:, 0, k] * x0[:, k]
                ga[:, 1:] += g[:, 1:, k] * x[:, :-1, k]
            g_la = ga * a[:, :, 0]
        g_x0 = a[:, 0] * g[:, 0] if ctx.needs_input_grad[2] else None
        return g_la, g, g_x0, None, None


def gated_scan(log_a: Tensor, b: Tensor, x0: Tensor, resets: Tensor | None, chunk: int) -> Tensor:
    """``x_t = exp(log_a_t) * x_{t-1} + b_t`` (``x_{t-1} := 0`` at resets) for every ``t``.

    ``log_a`` ``[B, T, *C]`` (<= 0) is shared by the ``K`` sequences ``b`` ``[B, T, K, *C]`` (start ``x0``
    ``[B, K, *C]``) -> ``[B, T, K, *C]``. Memory: the outputs plus ``[B, chunk, K, *C]`` scratch; the backward
    keeps no per-chunk intermediates (a custom autograd function, see :class:`_GatedScan`).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    keep = None if resets is None else ~resets
    return _GatedScan.apply(log_a, b, x0, keep, chunk)


def agalite_chunked(
    phi_q: Tensor,
    phi_k: Tensor,
    v: Tensor,
    beta_logit: Tensor,
    gamma_logit: Tensor,
    vt0: Tensor,
    kt0: Tensor,
    s0: Tensor,
    tau0: Tensor,
    resets: Tensor | None = None,
    eps: float = 1e-5,
    chunk: int = 32,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Same contract as :func:`agalite_naive`."""
    B, T = v.shape[:2]
    r = vt0.shape[2]
    tau = _steps_since_reset(tau0, resets, T)
    osc = oscillators(tau, r).to(v.dtype)  # [B, T, r]
    beta, gamma = torch.sigmoid(beta_logit), torch.sigmoid(gamma_logit)
    # log(1 - sigmoid(z)) = -softplus(z): stable for saturated gates
    la_v, la_k = -F.softplus(beta_logit), -F.softplus(gamma_logit)
    bv = osc[:, :, :, None, None] * (beta * v)[:, :, None]  # [B, T, r, nh, dv]
    gk = gamma * phi_k
    coef = torch.cat([torch.ones_like(osc[:, :, :1]), osc], 2)  # drive weights of s, kt_1..kt_r
    bk = coef[:, :, :, None, None] * gk[:, :, None]  # [B, T, 1 + r, nh, F], built in one pass
    xv = gated_scan(la_v, bv, vt0.transpose(1, 2), resets, chunk)  # [B, T, r, nh, dv]
    xk = gated_scan(la_k, bk, torch.cat([s0[:, None], kt0.transpose(1, 2)], 1), resets, chunk)
    s_all, kt_all = xk[:, :, 0], xk[:, :, 1:]
    score = torch.einsum("btjhf,bthf->btjh", kt_all, phi_q)
    num = torch.einsum("btjhd,btjh->bthd", xv, score) * (2 / r)
    o = num / ((s_all * phi_q).sum(-1, keepdim=True) + eps)
    return o, xv[:, -1].transpose(1, 2), kt_all[:, -1].transpose(1, 2), s_all[:, -1], tau[:, -1] + 1
