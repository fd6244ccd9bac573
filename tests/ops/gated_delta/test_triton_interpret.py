"""The Triton forward of the gated delta rule on CPU, through Triton's interpreter, vs the naive fp64 loop."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from cortexmem.ops.gated_delta import gated_delta_rule_naive  # noqa: E402
from tests.harness.metrics import rel_rms


def _inputs(T, Dk, Dv, seed, resets):
    gen = torch.Generator().manual_seed(seed)
    B, NH = 2, 2
    q, k = (F.normalize(torch.randn(B, T, NH, Dk, generator=gen), dim=-1) for _ in range(2))
    v = torch.randn(B, T, NH, Dv, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, NH, generator=gen) + 2)
    beta = torch.rand(B, T, NH, generator=gen)
    s0 = torch.randn(B, NH, Dk, Dv, generator=gen)
    r = None
    if resets:
        r = torch.rand(B, T, generator=gen) < 0.05
        r[0, 0] = r[1, 5] = r[1, 16] = r[0, T - 1] = True  # first step, inside a chunk, a chunk start, last step
    return q, k, v, g, beta, s0, r


# (T, Dk, Dv, chunk, dtype, initial state, resets, fused read-out, split state; None: the default): odd T, padded
# Dk/Dv, every chunk size, every product mode (see ``BF16_MIN_CHUNKS``), both read-outs (in the sequential kernel,
# or parallel over chunks from stored states), the state kept in two key halves (forced at small Dk; the default of
# bf16 and 3xTF32 products at Dk = 128)
CASES = [
    (37, 16, 24, 16, torch.float32, False, False, True, None),
    (130, 32, 32, 64, torch.float32, True, True, False, None),
    (77, 8, 16, 32, torch.float32, True, True, True, None),
    (77, 16, 16, 32, torch.bfloat16, True, True, False, None),
    (77, 24, 16, 32, torch.float32, True, True, False, True),
    (70, 32, 48, 16, torch.float32, False, True, True, True),
    (63, 128, 128, 64, torch.bfloat16, True, False, True, None),
    (67, 128, 128, 64, torch.bfloat16, False, True, False, None),
    (65, 128, 128, 64, torch.float32, True, True, True, None),
    # bf16 inputs take bf16 products with the fused read-out from 3 chunks on (the split state at Dk = 128), TF32
    # ones below, with the read-out parallel over chunks, or when asked
    (130, 128, 128, 64, torch.bfloat16, True, True, True, None),
    (77, 16, 16, 32, torch.bfloat16, True, True, True, None, "tf32"),
    (77, 32, 16, 32, torch.bfloat16, True, True, True, True, "bf16"),
    # fp32 inputs (3xTF32), unfused: the read-out parallel over chunks, the state split by default at padded Dk = 128
    # (the spill-free layout); and the fused default there (full-width state)
    (130, 100, 72, 64, torch.float32, True, True, False, None),
    (130, 100, 72, 64, torch.float32, True, True, None, None),
]


# The whole-chunk WY kernel (wy="chunk") in the whole forward: (T, Dk, Dv, chunk, dtype, initial state, products);
# resets everywhere (mid-chunk, and at every 32nd step: chunk starts for C = 32 and 64), padded Dk/Dv, a partial
# last chunk, one chunk only, C = 16 (no merge), 32 (one merge step), 64 (two), every product mode
CHUNK_WY_CASES = [
    (63, 24, 40, 64, torch.float32, True, "tf32x3"),
    (130, 24, 40, 64, torch.float32, False, "tf32x3"),
    (130, 40, 24, 64, torch.bfloat16, True, "bf16"),
    (130, 24, 40, 32, torch.bfloat16, False, "tf32"),
    (37, 16, 24, 16, torch.float32, True, "tf32"),
]

# WY terms alone, both kernels vs the fp64 UT transform of :func:`chunk_terms` on the same (rounded) inputs:
# (T, Dk, Dv, chunk, products, keys). "alike": keys all alike, b = 1, no decay, no resets (the largest growth of
# the inverse's intermediate terms); Dk = Dv = 128 streams four column blocks of the chunk kernel
WY_TERM_CASES = [
    (130, 24, 40, 64, "tf32x3", "random"),
    (70, 40, 24, 32, "bf16", "random"),
    (64, 128, 128, 64, "tf32x3", "alike"),
    (64, 128, 128, 64, "bf16", "alike"),
]


def _wy_inputs(T, Dk, Dv, keys):
    _, k, v, g, beta, _, r = _inputs(T, Dk, Dv, T + Dv, keys == "random")
    if keys == "alike":
        k = F.normalize(1 + 1e-3 * torch.randn(k.shape, generator=torch.Generator().manual_seed(T)), dim=-1)
        g, beta = torch.zeros_like(g), torch.ones_like(beta)
    else:
        r[0, 32::32] = True
    return k, v, g, beta, r


def _wy_results() -> dict:
    """Relative RMS errors of W and U: each WY kernel vs fp64 ``chunk_terms``; the chunk kernel vs the blocks one."""
    import triton

    from cortexmem.ops.gated_delta.chunk import chunk_terms
    from cortexmem.ops.gated_delta.triton_fwd import wy_terms

    out = {}
    for i, (T, Dk, Dv, C, products, keys) in enumerate(WY_TERM_CASES):
        k, v, g, beta, r = _wy_inputs(T, Dk, Dv, keys)
        dtype = torch.bfloat16 if products == "bf16" else torch.float32
        k, v, g, beta = (t.to(dtype) for t in (k, v, g, beta))
        _, _, _, _, U_ref, W_ref = chunk_terms(k, k, v, g, beta, r, C, torch.float64)
        B, NH, N = W_ref.shape[:3]
        rr = None if r is None else r.to(torch.int8)
        DK, DV = (max(16, triton.next_power_of_2(d)) for d in (Dk, Dv))
        W, U = {}, {}
        for wy in ("blocks", "chunk"):
            w, u = wy_terms(k, v, g, beta, rr, C, DK, DV, dtype, products=products, wy=wy)
            W[wy], U[wy] = w[..., :Dk].reshape(W_ref.shape), u[..., :Dv].reshape(U_ref.shape)
        out[i] = {"chunk_vs_ref": [rel_rms(W["chunk"], W_ref), rel_rms(U["chunk"], U_ref)],
                  "blocks_vs_ref": [rel_rms(W["blocks"], W_ref), rel_rms(U["blocks"], U_ref)],
                  "chunk_vs_blocks": [rel_rms(W["chunk"], W["blocks"]), rel_rms(U["chunk"], U["blocks"])]}
    return out


def _run_cases() -> dict:
    """In the child process (interpreter on): relative RMS errors and dtype checks of every case."""
    from tests.harness.triton_interpreter import bounds_check_catches_overrun, patch_interpreter, refusal

    patch_interpreter()
    from cortexmem.ops.gated_delta.triton_fwd import ForwardLaunch, gated_delta_forward, triton_gated_delta_rule

    out = {}
    for i, (T, Dk, Dv, chunk, dtype, with_s0, with_resets, fused, split, *products) in enumerate(CASES):
        q, k, v, g, beta, s0, r = _inputs(T, Dk, Dv, T + Dk, with_resets)
        s0 = s0 if with_s0 else None
        o_ref, s_ref = gated_delta_rule_naive(*(t.double() for t in (q, k, v, g, beta)),
                                              initial_state=None if s0 is None else s0.double(), resets=r)
        with torch.no_grad():
            launch = ForwardLaunch(fused=fused, out_block_v=16, split=split, products=products[0] if products else None)
            fn = partial(gated_delta_forward, output_final_state=True, config=launch)
            o, s = fn(*(t.to(dtype) for t in (q, k, v, g, beta)), chunk_size=chunk, initial_state=s0, resets=r)
        same = o.shape == o_ref.shape and s.shape == s_ref.shape and o.dtype == dtype and s.dtype == dtype
        out[i] = [rel_rms(o, o_ref), rel_rms(s, s_ref), same]
    for i, (T, Dk, Dv, chunk, dtype, with_s0, products) in enumerate(CHUNK_WY_CASES):
        q, k, v, g, beta, s0, r = _inputs(T, Dk, Dv, T + Dv, True)
        r[0, 32::32] = True
        s0 = s0 if with_s0 else None
        o_ref, s_ref = gated_delta_rule_naive(*(t.double() for t in (q, k, v, g, beta)),
                                              initial_state=None if s0 is None else s0.double(), resets=r)
        with torch.no_grad():
            o, s = gated_delta_forward(*(t.to(dtype) for t in (q, k, v, g, beta)), chunk_size=chunk,
                                       initial_state=s0, output_final_state=True, resets=r,
                                       config=ForwardLaunch(products=products, wy="chunk"))
        out[f"chunk_wy{i}"] = [rel_rms(o, o_ref), rel_rms(s, s_ref), o.dtype == dtype and s.dtype == dtype]
    out["wy_terms"] = _wy_results()
    q, k, v, g, beta, _, _ = _inputs(20, 16, 16, 3, False)
    with torch.no_grad():
        o, s = triton_gated_delta_rule(q, k, v, g, beta, chunk_size=16, output_final_state=False)
        o_ref, _ = gated_delta_rule_naive(q.double(), k.double(), v.double(), g.double(), beta.double())
        out["no_final"] = [rel_rms(o, o_ref), s is None]
        out["bad_block"] = refusal(lambda: triton_gated_delta_rule(q, k, v, g, beta, chunk_size=16,
                                                                   config=ForwardLaunch(block_v=32)))
        for name, kw in (("bad_wy", dict(wy="rows")), ("bad_wy_block", dict(wy="chunk", wy_block=64)),
                         ("wy_block_blocks", dict(wy="blocks", wy_block=16))):
            out[name] = refusal(lambda kw=kw: gated_delta_forward(
                q, k, v, g, beta, chunk_size=16, initial_state=None, output_final_state=True, resets=None,
                config=ForwardLaunch(**kw)))
    out["oob_caught"] = bounds_check_catches_overrun()
    return out


@pytest.mark.parametrize("case", range(len(CASES)))
def test_interpreted_triton_matches_naive(interpreted, case):
    err_o, err_s, same = interpreted[str(case)]
    tol = 1e-5 if CASES[case][4] == torch.float32 else 2e-2
    assert same
    assert err_o <= tol
    assert err_s <= tol


def test_interpreted_triton_no_final_state_and_bad_block(interpreted):
    err_o, no_state = interpreted["no_final"]
    assert no_state and err_o <= 1e-5
    assert "block_v must be" in interpreted["bad_block"]
    assert interpreted["oob_caught"]


@pytest.mark.parametrize("case", range(len(CHUNK_WY_CASES)))
def test_interpreted_chunk_wy_forward_matches_naive(interpreted, case):
    err_o, err_s, same_dtype = interpreted[f"chunk_wy{case}"]
    tol = 1e-5 if CHUNK_WY_CASES[case][4] == torch.float32 else 2e-2
    assert same_dtype
    assert err_o <= tol
    assert err_s <= tol


@pytest.mark.parametrize("case", range(len(WY_TERM_CASES)))
def test_interpreted_wy_kernels_match_fp64_ut_transform(interpreted, case):
    errs = interpreted["wy_terms"][str(case)]
    _, _, _, _, products, keys = WY_TERM_CASES[case]
    # bf16 products round T^-1 (and the blocks kernel its cross-block terms) to 8 bits; else fp32 rounding. With
    # keys all alike the rows of W are differences of near-equal keys, so that rounding shows relative to the small
    # result (measured: chunk 0.029, blocks 0.053): bounded, and the chunk kernel no worse than the blocks one
    tol = 1e-5 if products != "bf16" else 2e-2 if keys == "random" else 1e-1
    for key in ("chunk_vs_ref", "blocks_vs_ref", "chunk_vs_blocks"):
        err_w, err_u = errs[key]
        assert err_w <= tol and err_u <= tol, (key, err_w, err_u)
    # (below 2e-6 both are at fp32 rounding, where the order of the sums decides: 3xTF32 takes the blocks kernel's
    # key products in column blocks)
    assert max(errs["chunk_vs_ref"]) <= max(max(errs["blocks_vs_ref"]) * 1.1, 2e-6)


def test_interpreted_bad_wy_arguments_name_expected_and_got(interpreted):
    assert "wy must be one of ('blocks', 'chunk'), got 'rows'" in interpreted["bad_wy"]
    assert "wy_block must be a power of two in [16, 16], got 64" in interpreted["bad_wy_block"]
    expected = "wy_block is the column block of wy='chunk', got wy_block=16 with wy='blocks'"
    assert expected in interpreted["wy_block_blocks"]
