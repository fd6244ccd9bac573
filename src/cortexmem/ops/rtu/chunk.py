"""Fast RTU paths without a loop over time: a parallel scan, closed-form traces, chunked full-rank powers."""

from __future__ import annotations

import torch
from torch import Tensor


def _same_segment(resets: Tensor | None, B: int, L: int, device) -> tuple[Tensor | None, Tensor | None]:
    """``same[b, t, s]``: no reset in ``(s, t]``; ``fresh[b, t]``: none in ``[0, t]`` (None: no resets)."""
    if resets is None:
        return None, None
    cnt = resets.to(torch.int32).cumsum(1)
    return cnt[:, :, None] == cnt[:, None, :], cnt == 0


def rtu_scan(u: Tensor, lam: Tensor, c0: Tensor, resets: Tensor | None = None) -> Tensor:
    """Same ``c`` as :func:`rtu_naive` by a log-depth parallel scan (Hillis-Steele), no loop over time.

    Step ``t`` is the affine map ``c -> a_t c + u_t`` with ``a_t = lam`` (``0`` at a reset); composing maps
    over doubling spans takes ``ceil(log2 T)`` out-of-place passes of ``O(B T H)`` each, and only products of
    ``|a| <= 1`` appear, so nothing overflows whatever the decay.
    """
    B, T, H = u.shape
    a = lam.expand(B, T, H)
    if resets is not None:
        a = torch.where(resets[..., None], torch.zeros_like(a), a)
    b = torch.cat([u[:, :1] + a[:, :1] * c0[:, None], u[:, 1:]], 1)  # fold the incoming state into step 0
    span = 1
    while span < T:
        b = torch.cat([b[:, :span], b[:, span:] + a[:, span:] * b[:, :-span]], 1)
        a = torch.cat([a[:, :span], a[:, span:] * a[:, :-span]], 1)
        span *= 2
    return b


def rtu_final_traces(
    c: Tensor, c0: Tensor, log_lam: Tensor, resets: Tensor | None, drive: Tensor, e_lam0: Tensor, e_w0: Tensor
) -> tuple[Tensor, Tensor]:
    """The traces after the last step (same as :func:`rtu_naive`'s), in closed form over the whole call.

    Step ``s`` contributes to the final trace with weight ``lam^(T-1-s)`` iff no reset falls in ``(s, T-1]``;
    its ``e_lam`` input is the previous hidden ``c_{s-1}`` *after* the reset at ``s`` (zero when
    ``resets[s]``).
    """
    B, T, H = c.shape
    prev = torch.cat([c0[:, None], c[:, :-1]], 1)
    idx = torch.arange(T, device=c.device)
    w = torch.exp((T - 1 - idx).to(log_lam.real.dtype)[:, None] * log_lam)[None].expand(B, T, H)  # [B, T, H]
    w_init = torch.exp(T * log_lam)[None].expand(B, H)
    if resets is not None:
        prev = torch.where(resets[..., None], torch.zeros_like(prev), prev)
        cnt = resets.to(torch.int32).cumsum(1)
        w = torch.where((cnt == cnt[:, -1:])[..., None], w, torch.zeros_like(w))
        w_init = torch.where((cnt[:, -1] == 0)[:, None], w_init, torch.zeros_like(w_init))
    e_lam = (w * prev).sum(1) + w_init * e_lam0
    d = drive.to(c.dtype)
    if e_w0.dim() == 3:
        e_w = torch.einsum("bth,btz->bhz", w, d) + w_init[..., None] * e_w0
    else:
        e_w = (w * d).sum(1) + w_init * e_w0
    return e_lam, e_w


def rtu_full_chunked(u: Tensor, lam_mat: Tensor, c0: Tensor, resets: Tensor | None = None, chunk: int = 16) -> Tensor:
    """Same as :func:`rtu_full_naive` with matrix powers per chunk: ``c_t = sum_s Lam^(t-s) u_s + Lam^(t+1)
    c0``."""
    B, T, H = u.shape
    outs, c = [], c0
    powers = [torch.eye(H, dtype=lam_mat.dtype, device=u.device)]
    for _ in range(min(chunk, T)):
        powers.append(powers[-1] @ lam_mat)
    P = torch.stack(powers)  # [L + 1, H, H]: P[k] = Lam^k
    for a in range(0, T, chunk):
        uc = u[:, a : a + chunk]
        L = uc.shape[1]
        idx = torch.arange(L, device=u.device)
        diff = idx[:, None] - idx[None, :]
        q = torch.einsum("bsh,kgh->bskg", uc, P[:L])  # q[b, s, k] = Lam^k u_s
        g = q[:, idx[None, :].expand(L, L), diff.clamp(min=0)]  # [B, t, s, H] = Lam^(t-s) u_s
        keep = (diff >= 0)[None].expand(B, L, L)
        same, fresh = _same_segment(None if resets is None else resets[:, a : a + chunk], B, L, u.device)
        if same is not None:
            keep = keep & same
        cc = torch.where(keep[..., None], g, torch.zeros_like(g)).sum(2)
        carry = torch.einsum("bh,tgh->btg", c, P[1 : L + 1])
        if fresh is not None:
            carry = torch.where(fresh[..., None], carry, torch.zeros_like(carry))
        cc = cc + carry
        outs.append(cc)
        c = cc[:, -1]
    return torch.cat(outs, 1)


def inject_traces(c0: Tensor, e_lam0: Tensor, e_w0: Tensor, lam: Tensor, w: Tensor) -> Tensor:
    """``c0`` unchanged in value, but with ``d c0 / d(lam, w) = (e_lam0, e_w0)`` for autograd.

    The carried state came from earlier, detached calls; its traces are its Jacobian w.r.t. the recurrent
    parameters. Adding ``e * (p - p.detach())`` (zero in value) makes backprop add ``adjoint(c0) * e`` to the
    parameters' gradients: exactly the RTRL term for the truncated past, so the gradient of a loss in this
    call equals full BPTT through every earlier call. ``w`` is ``[H, Z]`` with ``e_w0`` ``[B, H, Z]`` or
    ``[H]`` with ``[B, H]``.
    """
    dw = w - w.detach()
    through_w = (e_w0 * dw).sum(-1) if e_w0.dim() == 3 else e_w0 * dw
    return c0 + e_lam0 * (lam - lam.detach()) + through_w
