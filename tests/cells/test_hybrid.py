"""HybridCell: documented semantics (per-token reference), step == sequence across windows, state size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cortexmem import HybridCellConfig, build_cell
from cortexmem.ops.gated_delta import gated_delta_rule_naive
from tests.harness.contract import CHECKS, assert_steps_match_sequence


def _cell(**kw):
    torch.manual_seed(0)
    cfg = {"hidden_size": 12, "num_heads": 2, "chunk_size": 4, "window": 5, **kw}
    return build_cell(HybridCellConfig(**cfg)).double()


def _reference(cell, x, resets):
    """Token by token: softmax (``tau * cos``) over the last ``window`` tokens of the segment + delta memory of older
    ones."""
    B, T, _ = x.shape
    W, NH, Dh = cell.window, cell.num_heads, cell.head_dim
    conv0 = cell.init_state(B, dtype=x.dtype).get("conv", None)
    q, k, v, _ = cell.qkv(x, conv0, resets)
    g, beta = cell.write_gates(x)
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    ys = torch.zeros(B, T, cell.hidden_size, dtype=x.dtype)
    for b in range(B):
        start = 0
        for t in range(T):
            if resets[b, t]:
                start = t
            lo = max(start, t - W + 1)
            scores = torch.einsum("hd,shd->hs", qn[b, t], kn[b, lo : t + 1]) * cell.log_tau.exp()[:, None]
            attn = cell.attn_norm(torch.einsum("hs,shd->hd", scores.softmax(-1), v[b, lo : t + 1]))
            S = torch.zeros(1, NH, Dh, Dh, dtype=x.dtype)
            if t - W + 1 > start:
                sl = slice(start, t - W + 1)
                _, S = gated_delta_rule_naive(*(z[b : b + 1, sl] for z in (qn, kn, v, g, beta)))
            mem = torch.einsum("hkv,hk->hv", S[0], qn[b, t])
            m = torch.sigmoid(cell.mix_proj(x[b, t]))[:, None]
            h = m * attn + (1 - m) * cell.o_norm(mem)
            ys[b, t] = cell.output(x[b : b + 1, t : t + 1], h[None, None])[0, 0]
    return ys


@pytest.mark.parametrize("window", [1, 5, 40])
def test_matches_per_token_reference(window):
    cell = _cell(window=window, compressor="linear", rank=4)
    x = torch.randn(2, 23, 12, dtype=torch.float64)
    r = torch.zeros(2, 23, dtype=torch.bool)
    r[0, 9] = r[1, 3] = r[1, 4] = True
    with torch.no_grad():
        y, _ = cell(x, resets=r)
        torch.testing.assert_close(y, _reference(cell, x, r), atol=1e-10, rtol=0)


def test_step_equals_sequence_across_window_boundaries():
    cell = _cell()
    x = torch.randn(2, 27, 12, dtype=torch.float64)
    r = torch.zeros(2, 27, dtype=torch.bool)
    r[0, 12] = r[1, 20] = True
    assert_steps_match_sequence(cell, x, r, atol=1e-10)
    # and in uneven pieces that straddle windows and chunks
    y, _ = cell(x, resets=r)
    st, ys = None, []
    for a, b in ((0, 3), (3, 11), (11, 12), (12, 26), (26, 27)):
        yp, st = cell(x[:, a:b], st, resets=r[:, a:b])
        ys.append(yp)
    torch.testing.assert_close(torch.cat(ys, 1), y, atol=1e-10, rtol=0)


def test_state_size_is_constant_in_sequence_length():
    cell = _cell()
    numel = lambda s: sum(v.numel() for v in s.values(True, True))  # noqa: E731
    sizes = {numel(cell(torch.randn(1, T, 12, dtype=torch.float64))[1]) for T in (1, 4, 5, 6, 60)}
    W, NH, Dh, K = 5, 2, 6, 4
    assert sizes == {NH * Dh * Dh + W * NH * (2 * Dh + 2) + 1 + (K - 1) * 3 * NH * Dh}


def test_window_slot_count_after_resets():
    cell = _cell()
    x = torch.randn(2, 8, 12, dtype=torch.float64)
    r = torch.zeros(2, 8, dtype=torch.bool)
    r[0, 6] = True
    _, s = cell(x, resets=r)
    assert s["n"].tolist() == [2, 5]
    assert (s["k"][0, :3] == 0).all() and (s["k"][0, 3:] != 0).any()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_contract_with_compressor_and_unit_window(check):
    torch.manual_seed(0)
    cfg = HybridCellConfig(hidden_size=16, num_heads=2, chunk_size=8, window=1, compressor="linear", rank=4,
                           use_short_conv=False)
    check(build_cell(cfg).eval())


def test_in_post_up_gated_block():
    import cortexmem

    cfg = cortexmem.PostUpGatedBlockConfig(cell=HybridCellConfig(num_heads=2, chunk_size=4, window=3))
    blk = cortexmem.build_block(cfg, 8)
    y, s = blk(torch.randn(2, 10, 8))
    assert y.shape == (2, 10, 8) and s["HybridCell", "k"].shape == (2, 3, 2, 4)
