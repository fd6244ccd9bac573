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


def _levels(bufs_b: tuple[Tensor, Tensor], bufs_a: tuple[Tensor, Tensor], L: int, H: int, reverse: bool):
    """Zero-start Hillis-Steele scan inside every chunk of the chunk-layout buffers ``[B, N, L + H, ...]``.

    The data sit in the first buffer of each pair at ``[H, H + L)`` (``[0, L)`` when ``reverse``); the ``H``
    pad slots hold gate 1 and drive 0, so a level is one shifted read (``log2(L)`` levels of two fused
    elementwise ops, no edge copies). Returns ``(x, A)``: chunk-local results and gate products, views.
    """
    off = 0 if reverse else H
    (b, bn), (a, an) = bufs_b, bufs_a
    mb, mbn, ma, man = (t.narrow(2, off, L) for t in (b, bn, a, an))
    d = 1
    while d < L:
        sh = off + d if reverse else off - d
        torch.addcmul(mb, ma, b.narrow(2, sh, L), out=mbn)
        torch.mul(ma, a.narrow(2, sh, L), out=man)
        b, bn, a, an, mb, mbn, ma, man = bn, b, an, a, mbn, mb, man, ma
        d *= 2
    return mb, ma


def _scan(a: Tensor, b: Tensor | tuple[Tensor, Tensor], x0: Tensor, chunk: int, reverse: bool = False) -> Tensor:
    """No-graph ``x_t = a_t x_{t-1} + b_t``: ``a [B, T, 1, *C]``, ``b [B, T, K, *C]``, ``x0 [B, K, *C]``.

    ``b`` may be given as ``(coef [B, T, K], u [B, T, *C])`` (``b = coef u``), written straight into the
    scratch that becomes the output.

    All chunks at once: a Hillis-Steele scan inside each chunk (``log2(chunk)`` elementwise levels, only
    products of gates in ``[0, 1]``: it never overflows, nothing quadratic in the chunk length), then the
    chunk-start carries (a short loop over chunks, one fused op each) added with the in-chunk gate products.
    ``reverse`` runs ``x_t = a_t x_{t+1} + b_t`` from the end.
    """
    B, T, K = x0.shape[0], a.shape[1], x0.shape[1]
    L = max(1, min(chunk, T))
    n = -(-T // L)
    pad = n * L - T
    H = 1 << ((L - 1).bit_length() - 1) if L > 1 else 0  # the largest shift, a power of two below L
    off = 0 if reverse else H
    C = x0.shape[2:]
    ones = [1] * len(C)
    # ping-pong pairs allocated together so one fill sets both pads (the rest is always written before read)
    pad_at = L if reverse else 0
    pair_b = x0.new_empty(2, B, n, L + H, K, *C)
    pair_a = a.new_empty(2, B, n, L + H, 1, *C)
    pair_b.narrow(3, pad_at, H).fill_(0.0)
    pair_a.narrow(3, pad_at, H).fill_(1.0)
    bufs_b, bufs_a = pair_b.unbind(0), pair_a.unbind(0)
    # time padding: gate 1, drive 0 beyond the far end (after the last step, or before the first when
    # reversed), so it never reaches a real step
    tpad = (0, 0) * (len(C) + 1) + ((pad, 0) if reverse else (0, pad))
    if isinstance(b, tuple):
        coef, u = b
        if pad:
            coef, u = F.pad(coef, tpad[2 * len(C) :]), F.pad(u, tpad[2:])
        torch.mul(coef.view(B, n, L, K, *ones), u.view(B, n, L, 1, *C), out=bufs_b[0].narrow(2, off, L))
    else:
        bufs_b[0].narrow(2, off, L).copy_((F.pad(b, tpad) if pad else b).view(B, n, L, K, *C))
    bufs_a[0].narrow(2, off, L).copy_((F.pad(a, tpad, value=1.0) if pad else a).view(B, n, L, 1, *C))
    x, A = _levels(bufs_b, bufs_a, L, H, reverse)
    # carry entering each chunk (from the left; from the right when reversed): one fused op per chunk
    e = 0 if reverse else -1
    ca, cb = A.select(2, e).unbind(1), x.select(2, e).unbind(1)  # [B, 1, *C], [B, K, *C] per chunk
    carry = [x0]
    for c in range(n - 1, 0, -1) if reverse else range(n - 1):
        carry.append(torch.addcmul(cb[c], ca[c], carry[-1]))
    # out of place: the carry update also writes the compact result (the padded scratch is then freed)
    x = torch.addcmul(x, A, torch.stack(carry[::-1] if reverse else carry, 1)[:, :, None])
    x = x.view(B, n * L, K, *C)
    return x[:, pad:] if reverse else x[:, :T]


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
        B, T, K = coef.shape
        # g_t = dL/dx_t + a_{t+1} g_{t+1}: the same scan run backwards in time
        a_next = F.pad(a[:, 1:], (0, 0) * (a.dim() - 2) + (0, 1))
        g = _scan(a_next, gx, torch.zeros_like(x0), ctx.chunk, reverse=True)
        need = ctx.needs_input_grad
        g_la = g_coef = g_u = None
        # K-contractions as batched products over (b, t): no [B, T, K, *C] temporaries
        g3 = g.reshape(B * T, K, -1)
        if need[0]:  # dL/dlog_a_t = a_t sum_k g_t x_{t-1}
            x_prev = torch.cat([x0[:, None], x[:, :-1]], 1)
            g_la = x_prev.mul_(g).sum(2).mul_(a[:, :, 0])
        if need[1]:  # dL/dcoef_tk = sum_c g_tkc u_tc
            g_coef = torch.bmm(g3, u.reshape(B * T, -1, 1)).view(B, T, K)
        if need[2]:  # dL/du_t = sum_k coef_tk g_tk
            g_u = torch.bmm(coef.reshape(B * T, 1, K), g3).view(u.shape)
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


def agalite_chunked(phi_q: Tensor, phi_k: Tensor, v: Tensor, beta_logit: Tensor, gamma_logit: Tensor, vt0: Tensor,
                    kt0: Tensor, s0: Tensor, tau0: Tensor, resets: Tensor | None = None, eps: float = 1e-5,
                    chunk: int = 32) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Same contract as :func:`agalite_naive`."""
    B, T = v.shape[:2]
    r = vt0.shape[2]
    tau = _steps_since_reset(tau0, resets, T)
    osc = oscillators(tau, r).to(v.dtype)  # [B, T, r]
    beta, gamma = torch.sigmoid(beta_logit), torch.sigmoid(gamma_logit)
    # log(1 - sigmoid(z)) = -softplus(z): stable for saturated gates
    la_v, la_k = -F.softplus(beta_logit), -F.softplus(gamma_logit)
    # one scan for both memories, side by side on the feature axis: values [.., :dv] with sequences
    # (unused, vt_1..vt_r), key features [.., dv:] with (s, kt_1..kt_r); drive weights (1, c_1..c_r) for both
    dv = v.shape[-1]
    coef = torch.cat([torch.ones_like(osc[:, :, :1]), osc], 2)  # [B, T, 1 + r]
    x0 = torch.cat([torch.cat([torch.zeros_like(vt0[:, :, :1]), vt0], 2), torch.cat([s0[:, :, None], kt0], 2)], -1)
    x = gated_scan(
        torch.cat([la_v, la_k], -1), coef, torch.cat([beta * v, gamma * phi_k], -1), x0.transpose(1, 2), resets, chunk
    )  # [B, T, 1 + r, nh, dv + F]
    # both reads span the whole feature axis with zero weights where they do not apply: slicing the scan's
    # output instead would cost two zero-filled full-size gradients (slice backward) plus their sum
    dots = (x * F.pad(phi_q, (dv, 0))[:, :, None]).sum(-1)  # [B, T, 1 + r, nh]: (s, kt_j) . phi(q)
    w = F.pad(dots[:, :, 1:], (0, 0, 1, 0))  # [B, T, 1 + r, nh], slot 0 (the unused value sum) weighted 0
    num = (x * w[..., None]).sum(2)[..., :dv] * (2 / r)
    o = num / (dots[:, :, :1].transpose(2, 3) + eps)
    last = x[:, -1].transpose(1, 2)  # [B, nh, 1 + r, dv + F]
    return o, last[:, :, 1:, :dv], last[:, :, 1:, dv:], last[:, :, 0, dv:], tau[:, -1] + 1
