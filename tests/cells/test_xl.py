"""XLCell: a fresh (or empty) memory is masked, sequence == steps with resets, axon Q/K/V."""

from __future__ import annotations

import pytest
import torch

from cortexmem import XLCell, XLCellConfig


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
