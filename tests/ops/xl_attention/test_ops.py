"""Transformer-XL attention op: query blocks vs the naive loop (outputs and gradients), with resets and partly valid
memories."""

from __future__ import annotations

import pytest
import torch

from cortexmem.ops.xl_attention import xl_attention, xl_attention_naive

D = torch.float64


def _inputs(B, T, M, nh=2, dh=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=D).requires_grad_(True)  # noqa: E731
    return dict(
        q=r(B, T, nh, dh),
        k=r(B, T, nh, dh),
        v=r(B, T, nh, dh),
        rel=r(M + 1, nh, dh),
        u_bias=r(nh, dh),
        v_bias=r(nh, dh),
        k_mem=r(B, M, nh, dh),
        v_mem=r(B, M, nh, dh),
    )


@pytest.mark.parametrize("T", [1, 7, 63])
@pytest.mark.parametrize("M", [1, 5])
@pytest.mark.parametrize("with_resets", [False, True])
def test_blocked_matches_naive(T, M, with_resets):
    B = 4
    inp = _inputs(B, T, M, seed=T + M)
    n_valid = torch.tensor([0, M, 1, M // 2])
    g = torch.Generator().manual_seed(T)
    r = (torch.rand(B, T, generator=g) < 0.15) if with_resets else None
    fast = xl_attention(**inp, n_valid=n_valid, resets=r, block=4)
    ref = xl_attention_naive(**inp, n_valid=n_valid, resets=r)
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    leaves = list(inp.values())
    w = [torch.randn(o.shape, generator=g, dtype=D) for o in fast[:3]]
    gf = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(fast[:3], w, strict=False)), leaves)
    gr = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(ref[:3], w, strict=False)), leaves)
    for a, b in zip(gf, gr, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
