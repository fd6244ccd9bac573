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


def _scan(a: Tensor, b: Tensor | tuple[Tensor, Tensor], x0: Tensor, chunk: int, reverse: bool = False) -> Tensor:
    """No-graph ``x_t = a_t x_{t-1} + b_t``: ``a [B, T, 1, *C]``, ``b [B, T, K, *C]``, ``x0 [B, K, *C]``.

    ``b`` may be given as ``(coef [B, T, K], u [B, T, *C])`` (``b = coef u``), written straight into the
    scratch that becomes the output.

    All chunks at once: a Hillis-Steele scan inside each chunk (``log2(chunk)`` elementwise levels, only
    products of gates in ``[0, 1]``: it never overflows, nothing quadratic in the chunk length), then the
    chunk-start carries (a short loop over chunks) added with the in-chunk gate products. ``reverse`` runs
    ``x_t = a_t x_{t+1} + b_t`` from the end.
    """
    B, T, K = x0.shape[0], a.shape[1], x0.shape[1]
    L = max(1, min(chunk, T))
    n = -(-T // L)
    pad = n * L - T
    # scratch padded with gate 1, drive 0 beyond the far end (after the last step, or before the first when
    # reversed): the padding never reaches a real step
    bc = x0.new_empty(B, n * L, *x0.shape[1:])
    ac = a.new_empty(B, n * L, *a.shape[2:])
    real = slice(pad, None) if reverse else slice(0, T)
    if isinstance(b, tuple):
        coef, u = b
        torch.mul(coef.view(B, T, K, *([1] * (u.dim() - 2))), u[:, :, None], out=bc[:, real])
    else:
        bc[:, real] = b
    ac[:, real] = a
    if pad:
        far = slice(0, pad) if reverse else slice(T, None)
        bc[:, far], ac[:, far] = 0.0, 1.0
    bc, ac = bc.unflatten(1, (n, L)), ac.unflatten(1, (n, L))
    # ping-pong buffers: each level reads the previous one (a fused addcmul per level, no aliasing)
    bn, an, d = torch.empty_like(bc), torch.empty_like(ac), 1
    while d < L:
        to, frm, rest = (
            (slice(None, -d), slice(d, None), slice(L - d, None))
            if reverse
            else (slice(d, None), slice(None, -d), slice(None, d))
        )
        torch.addcmul(bc[:, :, to], ac[:, :, to], bc[:, :, frm], out=bn[:, :, to])
        torch.mul(ac[:, :, to], ac[:, :, frm], out=an[:, :, to])
        bn[:, :, rest], an[:, :, rest] = bc[:, :, rest], ac[:, :, rest]
        bc, bn, ac, an = bn, bc, an, ac
        d *= 2
    del bn, an
    carry = [x0]  # state entering each chunk, in scan order
    order = range(n - 1, 0, -1) if reverse else range(n - 1)
    edge = 0 if reverse else -1
    for c in order:
        carry.append(bc[:, c, edge] + ac[:, c, edge] * carry[-1])
    carries = torch.stack(carry[::-1] if reverse else carry, 1)
    bc += ac * carries[:, :, None]
    return bc.flatten(1, 2)[:, real]


class _GatedScan(torch.autograd.Function):
    """Linear scan whose backward is the reversed scan: saves the gates, the drive factors, start and outputs."""

    @staticmethod
    def forward(ctx, log_a, coef, u, x0, keep, chunk):  # type: ignore[override]
        a = torch.exp(log_a)[:, :, None]  # [B, T, 1, *C], shared by the K sequences
        if keep is not None:  # x_{t-1} := 0 at a reset: a zero gate
            a = a * keep.view(*keep.shape, *([1] * (a.dim() - 2))).to(a.dtype)
        x = _scan(a, (coef, u), x0, chunk)
        ctx.save_for_backward(a, coef, u, x0, x)
        ctx.chunk = chunk
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, gx: Tensor) -> tuple[Tensor | None, ...]:
        a, coef, u, x0, x = ctx.saved_tensors
        # g_t = dL/dx_t + a_{t+1} g_{t+1}: the same scan run backwards in time
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], 1)
        g = _scan(a_next, gx, torch.zeros_like(x0), ctx.chunk, reverse=True)
        need = ctx.needs_input_grad
        g_la = g_coef = g_u = None
        csum = tuple(range(2, u.dim()))
        # one sequence at a time: no [B, T, K, *C] products besides g
        if need[0]:  # dL/dlog_a_t = a_t sum_k g_t x_{t-1}
            ga = torch.zeros_like(u)
            for k in range(x.shape[2]):
                ga[:, 0] += g[:, 0, k] * x0[:, k]
                ga[:, 1:] += g[:, 1:, k] * x[:, :-1, k]
            g_la = ga * a[:, :, 0]
        if need[1]:  # dL/dcoef_tk = sum_c g_tkc u_tc
            g_coef = torch.stack([(g[:, :, k] * u).sum(csum) for k in range(x.shape[2])], 2)
        if need[2]:  # dL/du_t = sum_k coef_tk g_tk
            g_u = torch.zeros_like(u)
            for k in range(x.shape[2]):
                g_u += coef[:, :, k].view(*coef.shape[:2], *([1] * (u.dim() - 2))) * g[:, :, k]
        g_x0 = a[:, 0] * g[:, 0] if need[3] else None
        return g_la, g_coef, g_u, g_x0, None, None


def gated_scan(log_a: Tensor, coef: Tensor, u: Tensor, x0: Tensor, resets: Tensor | None, chunk: int) -> Tensor:
    """``x_t = exp(log_a_t) * x_{t-1} + coef_t u_t`` (``x_{t-1} := 0`` at resets) for every ``t``.

    ``log_a`` and ``u`` ``[B, T, *C]`` (``log_a <= 0``) are shared by ``K`` sequences with drive weights
    ``coef [B, T, K]`` (start ``x0 [B, K, *C]``) -> ``[B, T, K, *C]``. Memory: the output (built in place of
    the drive) plus one ``[B, T, K, *C]`` temporary; the backward (a custom autograd function, see
    :class:`_GatedScan`) keeps only the inputs and the output, no per-chunk intermediates.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if coef.shape != (*u.shape[:2], x0.shape[1]) or log_a.shape != u.shape or x0.shape[2:] != u.shape[2:]:
        raise ValueError(
            f"expected log_a, u [B, T, *C], coef [B, T, K], x0 [B, K, *C]; got log_a {tuple(log_a.shape)}, "
            f"coef {tuple(coef.shape)}, u {tuple(u.shape)}, x0 {tuple(x0.shape)}"
        )
    keep = None if resets is None else ~resets
    return _GatedScan.apply(log_a, coef, u, x0, keep, chunk)


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
    coef_k = torch.cat([torch.ones_like(osc[:, :, :1]), osc], 2)  # drive weights of s, kt_1..kt_r
    xv = gated_scan(la_v, osc, beta * v, vt0.transpose(1, 2), resets, chunk)  # [B, T, r, nh, dv]
    xk = gated_scan(la_k, coef_k, gamma * phi_k, torch.cat([s0[:, None], kt0.transpose(1, 2)], 1), resets, chunk)
    # (s, kt_j) . phi(q) as product + sum: an einsum would keep a permuted copy of kt for its backward
    dots = (xk * phi_q[:, :, None]).sum(-1)  # [B, T, 1 + r, nh]
    num = torch.einsum("btjhd,btjh->bthd", xv, dots[:, :, 1:]) * (2 / r)
    o = num / (dots[:, :, :1].transpose(2, 3) + eps)
    return o, xv[:, -1].transpose(1, 2), xk[:, -1, 1:].transpose(1, 2), xk[:, -1, 0], tau[:, -1] + 1
