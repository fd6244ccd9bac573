"""AGaLiTe op: chunked form vs naive loop (outputs and gradients), exactness vs GaLiTe when r > 2 T, the gated
scan vs a loop."""

from __future__ import annotations

import pytest
import torch

from cortexmem.ops.agalite import agalite_chunked, agalite_naive, gated_scan

D = torch.float64


def _inputs(B, T, nh, Fd, dv, r, seed):
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=D)  # noqa: E731
    seq = dict(
        phi_q=rn(B, T, nh, Fd).relu(),
        phi_k=rn(B, T, nh, Fd).relu(),
        v=rn(B, T, nh, dv),
        beta_logit=rn(B, T, nh, dv),
        gamma_logit=rn(B, T, nh, Fd),
    )
    st = dict(vt0=rn(B, nh, r, dv), kt0=rn(B, nh, r, Fd), s0=rn(B, nh, Fd).abs())
    for d in (seq, st):
        for v in d.values():
            v.requires_grad_(True)
    return seq, st


@pytest.mark.parametrize("T", [1, 9, 63])
@pytest.mark.parametrize("with_resets", [False, True])
def test_chunked_matches_naive(T, with_resets):
    B, nh, Fd, dv, r = 3, 2, 6, 3, 5
    seq, st = _inputs(B, T, nh, Fd, dv, r, seed=T)
    tau0 = torch.tensor([0, 4, 17])
    g = torch.Generator().manual_seed(T + 1)
    res = (torch.rand(B, T, generator=g) < 0.15) if with_resets else None
    fast = agalite_chunked(**seq, **st, tau0=tau0, resets=res, chunk=8)
    ref = agalite_naive(**seq, **st, tau0=tau0, resets=res)
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
    leaves = [*seq.values(), *st.values()]
    w = [torch.randn(o.shape, generator=g, dtype=D) for o in fast[:4]]
    loss = lambda outs: sum((o * wi).sum() for o, wi in zip(outs[:4], w, strict=True))  # noqa: E731
    gf = torch.autograd.grad(loss(fast), leaves)
    gr = torch.autograd.grad(loss(ref), leaves)
    for a, b in zip(gf, gr, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8)


def test_exact_galite_when_r_exceeds_twice_the_horizon():
    # sum_j cos(2 pi j a / r) cos(2 pi j b / r) = (r / 2) [a = b] for 1 <= a, b and a + b < r
    B, T, nh, Fd, dv = 2, 6, 1, 4, 3
    r = 2 * T + 3
    seq, _ = _inputs(B, T, nh, Fd, dv, r, seed=3)
    z = lambda *s: torch.zeros(*s, dtype=D)  # noqa: E731
    o, *_ = agalite_naive(
        **seq,
        vt0=z(B, nh, r, dv),
        kt0=z(B, nh, r, Fd),
        s0=z(B, nh, Fd),
        tau0=torch.zeros(B, dtype=torch.long),
    )
    C, s, outs = z(B, nh, dv, Fd), z(B, nh, Fd), []
    for t in range(T):
        beta, gamma = seq["beta_logit"][:, t].sigmoid(), seq["gamma_logit"][:, t].sigmoid()
        bv, gk = beta * seq["v"][:, t], gamma * seq["phi_k"][:, t]
        C = (1 - beta)[..., :, None] * (1 - gamma)[..., None, :] * C + bv[..., :, None] * gk[..., None, :]
        s = (1 - gamma) * s + gk
        q = seq["phi_q"][:, t]
        outs.append(torch.einsum("bhdf,bhf->bhd", C, q) / ((s * q).sum(-1, keepdim=True) + 1e-5))
    torch.testing.assert_close(o, torch.stack(outs, 1), atol=1e-10, rtol=1e-9)


def _scan_loop(log_a, coef, u, x0, resets):
    x, outs = x0, []
    for t in range(u.shape[1]):
        if resets is not None:
            x = torch.where(resets[:, t].view(-1, *([1] * (x.dim() - 1))), 0.0, x)
        b = coef[:, t].view(*coef.shape[::2], *([1] * (u.dim() - 2))) * u[:, t, None]
        x = log_a[:, t, None].exp() * x + b
        outs.append(x)
    return torch.stack(outs, 1)


@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
@pytest.mark.parametrize("with_resets", [False, True])
def test_gated_scan_matches_loop(chunk, with_resets):
    g = torch.Generator().manual_seed(chunk)
    B, T, K, C = 2, 21, 3, (2, 5)
    log_a = (-torch.rand(B, T, *C, generator=g, dtype=D) * 3).requires_grad_(True)
    coef = torch.randn(B, T, K, generator=g, dtype=D, requires_grad=True)
    u = torch.randn(B, T, *C, generator=g, dtype=D, requires_grad=True)
    x0 = torch.randn(B, K, *C, generator=g, dtype=D, requires_grad=True)
    res = (torch.rand(B, T, generator=g) < 0.2) if with_resets else None
    fast, ref = gated_scan(log_a, coef, u, x0, res, chunk), _scan_loop(log_a, coef, u, x0, res)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=1e-10)
    w = torch.randn(fast.shape, generator=g, dtype=D)
    leaves = (log_a, coef, u, x0)
    gf = torch.autograd.grad((fast * w).sum(), leaves)
    gr = torch.autograd.grad((ref * w).sum(), leaves)
    for a_, b_ in zip(gf, gr, strict=True):
        torch.testing.assert_close(a_, b_, atol=1e-12, rtol=1e-10)


def test_gated_scan_rejects_bad_input():
    z = torch.zeros(1, 2, 1)
    with pytest.raises(ValueError, match="chunk"):
        gated_scan(z, z, z, z[:, :1], None, 0)
    with pytest.raises(ValueError, match="coef"):
        gated_scan(z, torch.zeros(1, 2, 3), z, z[:, :1], None, 4)
