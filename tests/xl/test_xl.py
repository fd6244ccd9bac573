"""XLCell / Transformer-XL attention: blocked op vs naive loop, empty memory is masked, axon Q/K/V."""

from __future__ import annotations

import pytest
import torch

from cortexmem import XLCell, XLCellConfig
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


def _plain_causal(cell, x):
    """Causal attention over the real tokens 0..t only, written directly (T <= mem_len + 1)."""
    B, T, _ = x.shape
    nh, dh = cell.n_heads, cell.head_dim
    q, k, v = (p(x).view(B, T, nh, dh) for p in (cell.q_proj, cell.k_proj, cell.v_proj))
    rel = cell.rel_embeddings(x.dtype, x.device)
    dist = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    s = torch.einsum("bihd,bjhd->bhij", q + cell.u_bias, k)
    s = s + torch.einsum("bihd,ijhd->bhij", q + cell.v_bias, rel[dist.clamp(min=0)])
    s = s.masked_fill(dist[None, None] < 0, float("-inf")) / dh**0.5
    return cell.out(torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v).reshape(B, T, -1))


def test_fresh_state_is_plain_causal_attention_over_real_tokens():
    torch.manual_seed(0)
    cell = XLCell(XLCellConfig(hidden_size=8, n_heads=2, mem_len=6, block_size=3))
    x = torch.randn(2, 7, 8)
    y, s = cell(x)  # fresh state, no reset flagged: the zero memory must not be attended
    torch.testing.assert_close(y, _plain_causal(cell, x), atol=1e-6, rtol=1e-5)
    assert s["n_valid"].tolist() == [6, 6]
    # garbage memory with n_valid = 0 is ignored too
    st = cell.init_state(2)
    st["k_mem"] = torch.randn_like(st["k_mem"]) * 10
    st["v_mem"] = torch.randn_like(st["v_mem"]) * 10
    torch.testing.assert_close(cell(x, st)[0], y, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("axon", [False, True])
def test_sequence_equals_steps_fp32_with_resets(axon):
    torch.manual_seed(1)
    cell = XLCell(XLCellConfig(hidden_size=8, n_heads=2, mem_len=4, block_size=5, use_axon_qkv=axon))
    x = torch.randn(3, 17, 8)
    r = torch.zeros(3, 17, dtype=torch.bool)
    r[0, 3] = r[1, 10] = r[2, 16] = True
    y, s = cell(x, None, resets=r)
    st, ys = None, []
    for t in range(17):
        yt, st = cell.step(x[:, t], st, resets=r[:, t])
        ys.append(yt)
    err = (y - torch.stack(ys, 1)).abs().max().item()
    assert err <= 1e-5, err
    assert torch.equal(s["n_valid"], st["n_valid"])
    if axon:
        assert set(s["xl_qkv"].keys()) == {"q", "k", "v"}
