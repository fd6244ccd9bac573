"""Triton forward (no autograd) of the chunkwise gated delta rule: kernels -> launcher -> public fn.

Kernels reading q, k, v, g, beta, resets in their ``[B, T, NH, .]`` layout (no padding copies):

* ``_wy_kernel``, parallel over (chunk, batch*head): the UT transform of :mod:`.chunk` per chunk. The unit lower
  triangular ``I + A`` is solved in blocks of 16 rows: the 16x16 diagonal block is inverted in registers
  (forward substitution for fp32; repeated squaring for bf16), the rows of earlier blocks (already solved and
  stored) enter through 16x16 products (with 3xTF32, their key products over ``WY_KEY_BLOCK`` columns at a time).
  Writes ``W = (I + A)^-1 diag(b e^gamma) K``, ``U = (I + A)^-1 diag(b) V``.
* ``_wy_chunk_kernel`` (opt-in, ``wy="chunk"``: checked on an H100; see ``WY_KERNELS``), same grid and outputs:
  the whole chunk at once. ``A`` from one ``K K^T``; the ``C / 16`` diagonal 16x16 blocks of ``I + A`` inverted
  together by forward substitution on a ``[C/16, 16, 16]`` tile; merged on the ``[C, C]`` tile as ``(I + N)^-1
  D0^-1`` with ``N = D0^-1 E`` (``E`` the off-diagonal blocks, ``N^(C/16) = 0``); then ``W``, ``U`` as ``[C, C] x
  [C, BD]`` products over column blocks. No intermediate row is stored and re-read.
* ``_state_kernel``, parallel over (block of ``Dv``, batch*head), sequential over chunks: keeps ``S [Dk, BV]``
  in registers, forms ``u = U - W S``, writes ``o = (e^gamma q) S + P u`` and updates
  ``S <- e^gamma_C S + K_out^T u``; decays and ``P`` are rebuilt from g and the keys (cheaper than reading them).
  Unfused, it stores each chunk-entry ``S`` and ``u`` instead, and ``_out_kernel`` (parallel over chunks) reads
  the outputs out (for 3xTF32 products the layout that does not spill on sm_90; see :data:`FP32_FUSED_DEFAULT`).

Resets are exact: the in-chunk segment id (a cumulative count of resets) masks every decay whose path crosses a
reset, as in :func:`.chunk.chunk_terms`. Same contract as :func:`gated_delta_rule_naive`; no-grad use only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...ops.precompile import launch
from .checks import check_gated_delta_inputs, needs_grad, triton_rejects

# Product modes (constexpr ``DOT``): fp32 operands with 3xTF32 (about fp32 accuracy), fp32 operands with one TF32
# pass (10-bit mantissa: finer than the bf16/fp16 inputs it serves), or bf16 operands (fastest). Measured on an H200
# with Triton 3.6: bf16 operands give a wrong final state (relative error 1.0) and outputs when the sequence is a
# single chunk (T <= chunk_size: the two-stage pipelined chunk loop runs once), a miscompile the bounds-checked
# interpreter does not reproduce; with the read-out parallel over chunks (``fused=False``) they gave a wrong
# output (Dk = 64, block_v 16) and an illegal memory access (Dk = 128, split state). With the fused read-out from 3
# chunks on (T = 129, 300, 2049, 8192, Dk 64 and 128, with and without resets) they match the fp64 reference.
# bf16 inputs therefore take bf16 products with the fused read-out from ``BF16_MIN_CHUNKS`` chunks on; every other
# 16-bit case (fp16 inputs too: not measured with bf16 products) takes TF32 products, correct on every shape tested.
BF16_MIN_CHUNKS = 3
DOT_TF32X3 = tl.constexpr(0)
DOT_TF32 = tl.constexpr(1)
DOT_BF16 = tl.constexpr(2)
PRODUCTS = {"tf32x3": DOT_TF32X3.value, "tf32": DOT_TF32.value, "bf16": DOT_BF16.value}
# WY kernels: ``blocks`` (16-row blocks one after another, the default) and ``chunk`` (the whole chunk at once;
# opt-in: on an H100 it matches ``blocks`` and its WY step is faster with TF32 products, but the whole forward was
# not at B8 T2048 D64, docs/figures/gated_delta_triton_h100.txt). ``WY_CHUNK_BLOCK``: the column block of keys and
# values it streams (the [C, C] inverse stays in registers)
WY_KERNELS = ("blocks", "chunk")
WY_CHUNK_BLOCK = 32
# ``_wy_kernel`` with 3xTF32: the key products of two 16-row blocks accumulate over column blocks of this width
# (whole-width [16, Dk] operands spill 240 B per thread at Dk = 128 on sm_90; other product modes keep them)
WY_KEY_BLOCK = tl.constexpr(32)


@triton.jit
def _dot(a, b, DOT: tl.constexpr):
    # one return: code after a return inside a constexpr ``if`` is still compiled (and fp32-only options fail)
    if DOT == DOT_BF16:
        r = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif DOT == DOT_TF32:
        r = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32")
    else:
        r = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32x3")
    return r


@triton.jit
def _tf32x3(a, b):
    """fp32 product to about fp32 accuracy from three TF32 passes: ``a = a_hi + a_lo`` with ``a_hi`` the top 10
    mantissa bits (exact in TF32) and ``a_lo`` the rest; ``a_lo b_hi + a_hi b_lo + a_hi b_hi`` (``a_lo b_lo`` is
    below fp32 rounding). Written out for the backward: Triton 3.6's own ``input_precision="tf32x3"`` lowering
    reads shared memory out of bounds on sm_90 in its dq/dk kernel (an illegal memory access on an H100). The
    forward keeps Triton's own, whose fp32 layouts are checked spill-free."""
    a_hi = (a.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
    b_hi = (b.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
    r = tl.dot(a - a_hi, b_hi, input_precision="tf32")
    r = tl.dot(a_hi, b - b_hi, r, input_precision="tf32")
    return tl.dot(a_hi, b_hi, r, input_precision="tf32")


@triton.jit
def _bdot(a, b, DOT: tl.constexpr):
    """The backward's products (:mod:`.triton_bwd`): :func:`_tf32x3` for fp32 inputs, else :func:`_dot`."""
    if DOT == DOT_TF32X3:
        r = _tf32x3(a.to(tl.float32), b.to(tl.float32))
    else:
        r = _dot(a, b, DOT)
    return r


@triton.jit
def _gates(G, R, b, h, t, T, NH, HAS_R: tl.constexpr):
    """Log decays with resets zeroed, and reset flags (int32), at the time steps ``t`` (0 past ``T``)."""
    ok = t < T
    g = tl.load(G + (b * T + t) * NH + h, mask=ok, other=0.0).to(tl.float32)
    if HAS_R:
        r = tl.load(R + b * T + t, mask=ok, other=0).to(tl.int32)
        g = tl.where(r != 0, 0.0, g)  # the reset step's own decay acts on a zeroed state: irrelevant
    else:
        r = t.to(tl.int32) * 0
    return g, r


@triton.jit
def _chunk_gates(G, R, b, h, n, T, NH, rc, C: tl.constexpr, HAS_R: tl.constexpr):
    """Per chunk: log decay since the chunk start ``gamma [C]`` and segment id ``seg [C]`` (0 = joined to S_0)."""
    g, r = _gates(G, R, b, h, n * C + rc, T, NH, HAS_R)
    return tl.cumsum(g, 0), tl.cumsum(r, 0)


@triton.jit
def _block_gates(G, R, b, h, t0, j0, g_c, r_c, rc, rb, T, NH, HAS_R: tl.constexpr):
    """``gamma`` and segment id of the 16 chunk rows ``j0 + rb`` (chunk starts at step ``t0``; ``g_c, r_c`` its gates).

    The rows before ``j0`` enter as one sum, so no ``[16, C]`` selection from the chunk's cumulative sums.
    """
    g, r = _gates(G, R, b, h, t0 + j0 + rb, T, NH, HAS_R)
    before = rc < j0
    gam = tl.sum(tl.where(before, g_c, 0.0), 0) + tl.cumsum(g, 0)
    seg = tl.sum(tl.where(before, r_c, 0), 0) + tl.cumsum(r, 0)
    return gam, seg


@triton.jit
def _keys_t(K, b, h, tc, ok, T, NH, DKR, rk):
    """Features ``rk`` of the keys (or queries) at the chunk steps ``tc``, transposed: ``[len(rk), C]``."""
    return tl.load(K + ((b * T + tc[None, :]) * NH + h) * DKR + rk[:, None], mask=ok[None, :] & (rk[:, None] < DKR),
                   other=0.0)


@triton.jit
def _rows(Q, b, h, tc, ok, T, NH, DKR, rk):
    """Features ``rk`` of the queries (or keys) at the chunk steps ``tc``: ``[C, len(rk)]``."""
    return tl.load(Q + ((b * T + tc[:, None]) * NH + h) * DKR + rk[None, :], mask=ok[:, None] & (rk[None, :] < DKR),
                   other=0.0)


@triton.jit
def _block_keys_dot(K, b, h, ti, oki, tj, okj, T, NH, DKR, DK: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr,
                    BWD: tl.constexpr = False):
    """``k_i . k_j [16, 16]`` of two 16-row blocks of keys (steps ``ti``, ``tj``), accumulated over ``BK``-column
    blocks: whole-width [16, DK] operands, split into two TF32 parts in registers by 3xTF32, spill at Dk = 128.
    ``BWD``: the backward's products (:func:`_bdot`)."""
    acc = tl.zeros((16, 16), dtype=tl.float32)
    for k0 in range(0, DK, BK):  # one block, masked past DKR, where BK > DK
        rk = k0 + tl.arange(0, BK)
        a, b_t = _rows(K, b, h, ti, oki, T, NH, DKR, rk), _keys_t(K, b, h, tj, okj, T, NH, DKR, rk)
        if BWD:
            acc += _bdot(a, b_t, DOT)
        else:
            acc += _dot(a, b_t, DOT)
    return acc


@triton.jit
def _wy_kernel(K, V, G, BETA, R, W, U, T, N, NH, DKR, DVR, DK: tl.constexpr, DV: tl.constexpr, C: tl.constexpr,
               HAS_R: tl.constexpr, DOT: tl.constexpr):
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // NH
    h = bh % NH
    NC = N * C
    rc = tl.arange(0, C)
    rb = tl.arange(0, 16)
    rk = tl.arange(0, DK)
    rv = tl.arange(0, DV)
    g_c, r_c = _gates(G, R, b, h, n * C + rc, T, NH, HAS_R)
    w_base = W + bh * NC * DK + n * C * DK
    u_base = U + bh * NC * DV + n * C * DV
    eye = (rb[:, None] == rb[None, :]).to(tl.float32)
    for ib in range(C // 16):  # a runtime loop: unrolling it (and the one below) multiplies compile time
        ri = ib * 16 + rb  # rows of this block, in the chunk
        ti = n * C + ri
        oki = ti < T
        gam_i, seg_i = _block_gates(G, R, b, h, n * C, ib * 16, g_c, r_c, rc, rb, T, NH, HAS_R)
        beta_i = tl.load(BETA + (b * T + ti) * NH + h, mask=oki, other=0.0).to(tl.float32)
        k_i = tl.load(K + ((b * T + ti[:, None]) * NH + h) * DKR + rk[None, :],
                      mask=oki[:, None] & (rk[None, :] < DKR), other=0.0)
        v_i = tl.load(V + ((b * T + ti[:, None]) * NH + h) * DVR + rv[None, :],
                      mask=oki[:, None] & (rv[None, :] < DVR), other=0.0)
        d_in = tl.where(seg_i == 0, tl.exp(gam_i), 0.0)  # e^gamma_i while joined to S_0
        rhs_w = (beta_i * d_in)[:, None] * k_i.to(tl.float32)
        rhs_u = beta_i[:, None] * v_i.to(tl.float32)
        for jb in range(ib):
            # the already solved rows of block jb enter through A_ij = b_i e^(gamma_i - gamma_j) k_i.k_j
            rj = jb * 16 + rb
            gam_j, seg_j = _block_gates(G, R, b, h, n * C, jb * 16, g_c, r_c, rc, rb, T, NH, HAS_R)
            tj = n * C + rj
            if DOT != DOT_TF32X3:
                kT_j = tl.load(K + ((b * T + tj[None, :]) * NH + h) * DKR + rk[:, None],
                               mask=(tj[None, :] < T) & (rk[:, None] < DKR), other=0.0)
            dec = tl.exp(tl.where(seg_j[None, :] == seg_i[:, None], gam_i[:, None] - gam_j[None, :], float("-inf")))
            if DOT == DOT_TF32X3:
                kk_ij = _block_keys_dot(K, b, h, ti, oki, tj, tj < T, T, NH, DKR, DK, WY_KEY_BLOCK, DOT)
            else:
                kk_ij = _dot(k_i, kT_j, DOT)
            a_ij = kk_ij * dec * beta_i[:, None]
            rhs_w -= _dot(a_ij, tl.load(w_base + rj[:, None] * DK + rk[None, :]), DOT)
            rhs_u -= _dot(a_ij, tl.load(u_base + rj[:, None] * DV + rv[None, :]), DOT)
        # diagonal block: M = -A_ii (strictly lower), inverted below
        if DOT != DOT_TF32X3:
            kT_i = tl.load(K + ((b * T + ti[None, :]) * NH + h) * DKR + rk[:, None],
                           mask=oki[None, :] & (rk[:, None] < DKR), other=0.0)
        link_d = (seg_i[:, None] == seg_i[None, :]) & (rb[None, :] < rb[:, None])
        dec_d = tl.exp(tl.where(link_d, gam_i[:, None] - gam_i[None, :], float("-inf")))
        if DOT == DOT_TF32X3:
            kk_ii = _block_keys_dot(K, b, h, ti, oki, ti, oki, T, NH, DKR, DK, WY_KEY_BLOCK, DOT)
        else:
            kk_ii = _dot(k_i, kT_i, DOT)
        m = -kk_ii * dec_d * beta_i[:, None]
        if DOT == DOT_BF16:
            # A^16 = 0, so (I + A)^-1 = sum_{n<16} (-A)^n = (I + M)(I + M^2)(I + M^4)(I + M^8) with M = -A: six
            # tiny fp32 products instead of 15 dependent row steps. Intermediate powers can exceed the result
            # (keys all alike: ~1e4), costing up to ~1e-3 absolute in fp32, below the bf16 rounding of the use.
            m2 = tl.dot(m, m, input_precision="ieee")
            m4 = tl.dot(m2, m2, input_precision="ieee")
            t_inv = m + eye
            t_inv += tl.dot(t_inv, m2, input_precision="ieee")
            t_inv += tl.dot(t_inv, m4, input_precision="ieee")
            t_inv += tl.dot(t_inv, tl.dot(m4, m4, input_precision="ieee"), input_precision="ieee")
        else:
            for i in range(1, 16):  # forward substitution, row by row: exact to fp32 rounding for any keys
                row = tl.sum(tl.where(rb[:, None] == i, m, 0.0), 0)  # -A_i (entries j < i)
                row = row + tl.sum(row[:, None] * m, 0)  # + sum_j -A_ij ((I + A)^-1 - I)_j
                m = tl.where(rb[:, None] == i, row[None, :], m)
            t_inv = m + eye
        w_i = _dot(t_inv, rhs_w, DOT)
        u_i = _dot(t_inv, rhs_u, DOT)
        tl.store(w_base + ri[:, None] * DK + rk[None, :], w_i.to(W.dtype.element_ty))
        tl.store(u_base + ri[:, None] * DV + rv[None, :], u_i.to(U.dtype.element_ty))
        tl.debug_barrier()  # the next block re-reads these rows, written by other threads of this program


@triton.jit
def _read_out(qk, qs, u, gamma, seg, rc, DOT: tl.constexpr):
    """Chunk outputs ``o = (e^gamma q) S + P u`` with ``P_ij = e^(gamma_i - gamma_j) q_i.k_j`` on joined j <= i.

    Takes the products ``qk = q K^T`` and ``qs = q S`` (summed over the key halves when the keys are split).
    """
    link = (rc[None, :] <= rc[:, None]) & (seg[:, None] == seg[None, :])
    dec = tl.exp(tl.where(link, gamma[:, None] - gamma[None, :], float("-inf")))
    d_in = tl.where(seg == 0, tl.exp(gamma), 0.0)  # e^gamma_i while joined to S_0
    # diag(d_in) (q S) rather than (diag(d_in) q) S: scales a (C, BV) tile instead of a (C, DK) one
    return qs * d_in[:, None] + _dot(qk * dec, u, DOT)


@triton.jit
def _merge_dot(a, b, DOT: tl.constexpr):
    """Products of the inverse's merge, on fp32 operands. Powers of the block-nilpotent ``N`` rounded to bf16 would
    compound over the merge (four chained products), so bf16 mode takes one TF32 pass like TF32 mode (the rounding
    the blocks kernel applies to its cross-block terms); fp32 inputs keep 3xTF32 (about fp32 accuracy)."""
    if DOT == DOT_TF32X3:
        r = tl.dot(a, b, input_precision="tf32x3")
    else:
        r = tl.dot(a, b, input_precision="tf32")
    return r


@triton.jit
def _wy_chunk_kernel(K, V, G, BETA, R, W, U, T, N, NH, DKR, DVR, DK: tl.constexpr, DV: tl.constexpr,
                     C: tl.constexpr, BD: tl.constexpr, HAS_R: tl.constexpr, DOT: tl.constexpr):
    # the whole chunk at once: A from one K K^T (accumulated over BD-column blocks of the keys), (I + A)^-1 in
    # registers, then W and U as [C, C] x [C, BD] products, one store per column block; nothing is re-read
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // NH
    h = bh % NH
    NC = N * C
    NB: tl.constexpr = C // 16
    rc = tl.arange(0, C)
    rd = tl.arange(0, BD)
    tc = n * C + rc
    ok = tc < T
    gamma, seg = _chunk_gates(G, R, b, h, n, T, NH, rc, C, HAS_R)
    beta = tl.load(BETA + (b * T + tc) * NH + h, mask=ok, other=0.0).to(tl.float32)
    kk = tl.zeros((C, C), dtype=tl.float32)
    for d0 in range(0, DK, BD):
        k = _rows(K, b, h, tc, ok, T, NH, DKR, d0 + rd)
        kk += _dot(k, tl.trans(k), DOT)
    link = (rc[None, :] < rc[:, None]) & (seg[:, None] == seg[None, :])
    a = kk * tl.exp(tl.where(link, gamma[:, None] - gamma[None, :], float("-inf"))) * beta[:, None]
    # I + A = D0 + E: D0 its C / 16 diagonal 16x16 blocks, E the rest (strictly block-lower)
    blk = rc // 16
    same_blk = blk[:, None] == blk[None, :]
    rn = tl.arange(0, NB)
    diag = (rn[:, None] == rn[None, :])[:, None, :, None]  # [NB, 1, NB, 1]: the diagonal blocks of a [C, C]
    m = -tl.sum(tl.where(diag, tl.reshape(a, (NB, 16, NB, 16)), 0.0), 2)  # [NB, 16, 16]: -A of each block
    rb = tl.arange(0, 16)
    # every product mode: forward substitution, row i of every block at once (exact to fp32 rounding). The repeated
    # squaring _wy_kernel takes for bf16 products needs batched fp32 FMA products here: 226-247 registers instead of
    # 138-158 (sm_90, Dk = 128, 4 warps), for a solve that is no more accurate
    for i in range(1, 16):
        sel = (rb == i)[None, :, None]
        row = tl.sum(tl.where(sel, m, 0.0), 1)  # [NB, 16]: -A_i (entries j < i)
        row = row + tl.sum(row[:, :, None] * m, 1)  # + sum_j -A_ij ((I + A)^-1 - I)_j
        m = tl.where(sel, row[:, None, :], m)
    d_inv = m + (rb[:, None] == rb[None, :]).to(tl.float32)[None, :, :]
    # D0^-1 back on the [C, C] tile (zero off the diagonal blocks)
    t_inv = tl.reshape(tl.where(diag, d_inv[:, :, None, :], 0.0), (C, C))
    if NB > 1:
        # (I + A)^-1 = (I + N)^-1 D0^-1 with N = D0^-1 E, N^NB = 0: (I + N)^-1 = (I - N)(I + N^2) for NB = 4.
        # Powers of N stay bounded (products of at most NB - 1 block terms of exact 16x16 inverses), unlike the
        # powers of the whole C x C nilpotent A (binomial growth, ~1e18 for keys all alike)
        p = -_merge_dot(t_inv, tl.where(same_blk, 0.0, a), DOT)  # -N
        t_inv += _merge_dot(p, t_inv, DOT)
        if NB > 2:
            t_inv += _merge_dot(_merge_dot(p, p, DOT), t_inv, DOT)
    # W = T diag(b e^gamma (joined to S_0)) K, U = T diag(b) V: the diagonals scale T's columns, not the [C, BD] tiles
    d_in = tl.where(seg == 0, tl.exp(gamma), 0.0)
    t_w = t_inv * (beta * d_in)[None, :]
    t_u = t_inv * beta[None, :]
    w_base = W + bh * NC * DK + n * C * DK + rc[:, None] * DK
    u_base = U + bh * NC * DV + n * C * DV + rc[:, None] * DV
    for d0 in range(0, DK, BD):
        k = _rows(K, b, h, tc, ok, T, NH, DKR, d0 + rd)
        tl.store(w_base + d0 + rd[None, :], _dot(t_w, k, DOT).to(W.dtype.element_ty))
    for d0 in range(0, DV, BD):
        v = _rows(V, b, h, tc, ok, T, NH, DVR, d0 + rd)
        tl.store(u_base + d0 + rd[None, :], _dot(t_u, v, DOT).to(U.dtype.element_ty))


@triton.jit
def _state_tile(X, bh, bv, DKR, DVR, DH: tl.constexpr, BV: tl.constexpr, SPLIT: tl.constexpr, LOAD: tl.constexpr):
    """A program's ``[DK, BV]`` state tile as two ``[DH, BV]`` fp32 key halves (the second one only with ``SPLIT``),
    loaded from ``X`` when ``LOAD`` (else zeros), with its key rows, value columns, offsets and masks."""
    rk = tl.arange(0, DH)
    rk2 = DH + rk
    rv = bv * BV + tl.arange(0, BV)
    s_off = bh * DKR * DVR + rk[:, None] * DVR + rv[None, :]
    s_mask = (rk[:, None] < DKR) & (rv[None, :] < DVR)
    s_mask2 = (rk2[:, None] < DKR) & (rv[None, :] < DVR)
    S = tl.zeros((DH, BV), dtype=tl.float32)
    S2 = tl.zeros((DH, BV), dtype=tl.float32)
    if LOAD:
        S = tl.load(X + s_off, mask=s_mask, other=0.0).to(tl.float32)
        if SPLIT:
            S2 = tl.load(X + s_off + DH * DVR, mask=s_mask2, other=0.0).to(tl.float32)
    return S, S2, rk, rk2, rv, s_off, s_mask, s_mask2


@triton.jit
def _state_kernel(Q, K, G, R, W, U, S0, O, SF, H, T, N, NH, DKR, DVR, DK: tl.constexpr, DV: tl.constexpr,
                  DH: tl.constexpr, SPLIT: tl.constexpr, C: tl.constexpr, BV: tl.constexpr, HAS_R: tl.constexpr,
                  HAS_S0: tl.constexpr, FUSED: tl.constexpr, DOT: tl.constexpr):
    # SPLIT: the state is kept as two key halves S, S2 of DH = DK / 2 rows, so that every product has the shapes
    # of the DK = 64 kernel (a 128-row state tile hits an illegal shared-memory access on sm_90 with Triton 3.6)
    bv = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // NH
    h = bh % NH
    rc = tl.arange(0, C)
    S, S2, rk, rk2, rv, s_off, s_mask, s_mask2 = _state_tile(S0, bh, bv, DKR, DVR, DH, BV, SPLIT, HAS_S0)
    for n in range(N):
        gamma, seg = _chunk_gates(G, R, b, h, n, T, NH, rc, C, HAS_R)
        gam_c = tl.sum(tl.where(rc == C - 1, gamma, 0.0), 0)
        seg_c = tl.max(seg, 0)
        d_out = tl.where(seg == seg_c, tl.exp(gam_c - gamma), 0.0)  # e^(gamma_C - gamma_j) while joined to the end
        d_c = tl.where(seg_c == 0, tl.exp(gam_c), 0.0)
        tc = n * C + rc
        ok = tc < T
        chunk = bh * N + n
        w_ptr = W + chunk * C * DK + rc[:, None] * DK + rk[None, :]
        kT = _keys_t(K, b, h, tc, ok, T, NH, DKR, rk)
        ws = _dot(tl.load(w_ptr), S, DOT)
        if SPLIT:
            kT2 = _keys_t(K, b, h, tc, ok, T, NH, DKR, rk2)
            ws += _dot(tl.load(w_ptr + DH), S2, DOT)
        u_ptr = U + chunk * C * DV + rc[:, None] * DV + rv[None, :]
        u = tl.load(u_ptr).to(tl.float32) - ws
        if FUSED:
            q = _rows(Q, b, h, tc, ok, T, NH, DKR, rk)
            qk = _dot(q, kT, DOT)
            qs = _dot(q, S, DOT)
            if SPLIT:
                q2 = _rows(Q, b, h, tc, ok, T, NH, DKR, rk2)
                qk += _dot(q2, kT2, DOT)
                qs += _dot(q2, S2, DOT)
            o = _read_out(qk, qs, u, gamma, seg, rc, DOT)
            tl.store(O + ((b * T + tc[:, None]) * NH + h) * DVR + rv[None, :], o.to(O.dtype.element_ty),
                     mask=ok[:, None] & (rv[None, :] < DVR))
        else:
            # chunk-entry state and pseudo-values for the parallel read-out; u overwrites U (this program's columns)
            h_ptr = H + chunk * DK * DV + rk[:, None] * DV + rv[None, :]
            tl.store(h_ptr, S.to(H.dtype.element_ty))
            if SPLIT:
                tl.store(h_ptr + DH * DV, S2.to(H.dtype.element_ty))
            tl.store(u_ptr, u.to(U.dtype.element_ty))
        ud = u * d_out[:, None]  # the decay scales u's rows, not kT's columns
        S = S * d_c + _dot(kT, ud, DOT)
        if SPLIT:
            S2 = S2 * d_c + _dot(kT2, ud, DOT)
    tl.store(SF + s_off, S, mask=s_mask)
    if SPLIT:
        tl.store(SF + s_off + DH * DVR, S2, mask=s_mask2)


@triton.jit
def _out_kernel(Q, K, G, R, H, U, O, T, N, NH, DKR, DVR, DK: tl.constexpr, DV: tl.constexpr, DH: tl.constexpr,
                SPLIT: tl.constexpr, C: tl.constexpr, BV: tl.constexpr, HAS_R: tl.constexpr, DOT: tl.constexpr):
    bv = tl.program_id(0)
    n = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    b = bh // NH
    h = bh % NH
    rc = tl.arange(0, C)
    rk = tl.arange(0, DH)
    rv = bv * BV + tl.arange(0, BV)
    gamma, seg = _chunk_gates(G, R, b, h, n, T, NH, rc, C, HAS_R)
    tc = n * C + rc
    ok = tc < T
    chunk = bh * N + n
    h_ptr = H + chunk * DK * DV + rk[:, None] * DV + rv[None, :]
    q = _rows(Q, b, h, tc, ok, T, NH, DKR, rk)
    qk = _dot(q, _keys_t(K, b, h, tc, ok, T, NH, DKR, rk), DOT)
    qs = _dot(q, tl.load(h_ptr), DOT)
    if SPLIT:
        q2 = _rows(Q, b, h, tc, ok, T, NH, DKR, DH + rk)
        qk += _dot(q2, _keys_t(K, b, h, tc, ok, T, NH, DKR, DH + rk), DOT)
        qs += _dot(q2, tl.load(h_ptr + DH * DV), DOT)
    u = tl.load(U + chunk * C * DV + rc[:, None] * DV + rv[None, :])
    o = _read_out(qk, qs, u, gamma, seg, rc, DOT)
    tl.store(O + ((b * T + tc[:, None]) * NH + h) * DVR + rv[None, :], o.to(O.dtype.element_ty),
             mask=ok[:, None] & (rv[None, :] < DVR))


def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _default_stages(dot: int) -> int:
    # bf16 products: prefetch the next chunk (2 stages; one stage was wrong on sm_90); fp32 operands keep one stage
    # (their tiles double the shared memory)
    return 2 if dot == PRODUCTS["bf16"] else 1


def _default_block_v(n_bh: int, DK: int, DV: int, dot: int, fused: bool = True) -> int:
    # about one (batch*head, V-block) program per SM (~132), without splitting V below 16; wide keys take narrower
    # V-blocks so the (DK, BV) state and the chunk tiles stay within registers and shared memory (the sweep:
    # benchmarks/gated_delta_triton.py). 3xTF32 unfused: 16 at Dk = 128, the widest block whose split state kernel
    # does not spill on sm_90 (benchmarks/gated_delta_triton_compile.py)
    per_dk = 2048 if dot == PRODUCTS["tf32x3"] and not fused else {PRODUCTS["bf16"]: 8192}.get(dot, 4096)
    bv = min(DV, 64, max(16, per_dk // DK))
    while bv > 16 and n_bh * (DV // bv) < 128:
        bv //= 2
    return bv


# The fp32-input forward (3xTF32 products) keeps the fused state kernel by default: it passed every GPU test,
# although on sm_90 it spills (276 B per thread at Dk = 64, 1832 B at 128; no block size or split avoids it). The
# unfused layout (``fused=False``: split state at Dk > 64, block_v 16 at Dk = 128, then the read-out kernel) compiles
# without spills but has run only in the interpreter; set this to False once a GPU run has checked and timed it.
FP32_FUSED_DEFAULT = True


def default_fused(products: str) -> bool:
    """The default read-out: fused in the sequential kernel (3xTF32 products: :data:`FP32_FUSED_DEFAULT`)."""
    return products != "tf32x3" or FP32_FUSED_DEFAULT


def default_products(dtype: torch.dtype, n_chunks: int, fused: bool = True) -> str:
    """``tf32x3`` for fp32/fp64 inputs; ``bf16`` for bf16 ones with the fused read-out from ``BF16_MIN_CHUNKS``
    chunks on; else (fp16, short sequences, read-out parallel over chunks) ``tf32``."""
    if dtype not in (torch.bfloat16, torch.float16):
        return "tf32x3"
    return "bf16" if dtype == torch.bfloat16 and fused and n_chunks >= BF16_MIN_CHUNKS else "tf32"


def wy_terms(k, v, g, beta, r, C, DK, DV, op_dtype, *, num_warps=None, products=None, wy="blocks", wy_block=None):
    """Contiguous inputs (``r`` int8 resets or None) -> ``W (B, NH, N*C, DK)``, ``U (B, NH, N*C, DV)``.

    ``wy``: ``blocks`` (``_wy_kernel``) or ``chunk`` (``_wy_chunk_kernel``, whose key/value column block is
    ``wy_block``, default ``WY_CHUNK_BLOCK`` capped at the padded width).
    """
    if wy not in WY_KERNELS:
        raise ValueError(f"gated delta rule, triton backend: wy must be one of {WY_KERNELS}, got {wy!r}")
    if wy == "blocks" and wy_block is not None:
        raise ValueError(f"gated delta rule, triton backend: wy_block is the column block of wy='chunk', got "
                         f"wy_block={wy_block} with wy='blocks'")
    B, T, NH, Dk = k.shape
    N = triton.cdiv(T, C)
    dot = PRODUCTS[products or ("bf16" if op_dtype != torch.float32 else "tf32x3")]
    W = torch.empty(B, NH, N * C, DK, dtype=op_dtype, device=k.device)
    U = torch.empty(B, NH, N * C, DV, dtype=op_dtype, device=k.device)
    args = (k, v, g, beta, r if r is not None else g, W, U, T, N, NH, Dk, v.shape[-1])
    if wy == "blocks":
        launch(_wy_kernel, (N, B * NH), *args, DK=DK, DV=DV, C=C, HAS_R=r is not None, DOT=dot,
               num_warps=num_warps or 4, num_stages=1)
        return W, U
    BD = wy_block or min(WY_CHUNK_BLOCK, DK, DV)
    if BD not in (16, 32, 64, 128) or BD > min(DK, DV):
        raise ValueError(f"gated delta rule, triton backend: wy_block must be a power of two in [16, "
                         f"{min(DK, DV)}], got {BD}")
    launch(_wy_chunk_kernel, (N, B * NH), *args, DK=DK, DV=DV, C=C, BD=BD, HAS_R=r is not None, DOT=dot,
           num_warps=num_warps or 4, num_stages=1)
    return W, U


@dataclass(frozen=True)
class ForwardLaunch:
    """How the Triton forward is launched; every field None takes the measured default. Only benchmarks sweep it.

    ``fused``: the sequential kernel also writes the outputs; otherwise it stores each chunk-entry state and the
    pseudo-values, and a kernel parallel over chunks (``out_block_v``, ``out_num_warps``) reads the outputs out
    (more parallel, more memory traffic). Default: fused (see :func:`default_fused`; unfused, 3xTF32 products do
    not spill on sm_90).
    ``split``: keep the state as two halves of ``DK / 2`` key rows (default at ``DK > 64``: bf16 products, and
    unfused 3xTF32 ones).
    ``products``: ``tf32x3`` | ``tf32`` | ``bf16`` (default :func:`default_products`); ``bf16`` on fewer than
    ``BF16_MIN_CHUNKS`` chunks or with ``fused=False`` is refused (wrong results on sm_90 with Triton 3.6, see
    ``BF16_MIN_CHUNKS``).
    ``wy``: the WY kernel, ``blocks`` (default) or ``chunk`` (opt-in, see ``WY_KERNELS``);
    ``wy_block``: the chunk kernel's key/value column block (see :func:`wy_terms`); ``wy_num_warps`` its warps.
    ``block_v``, ``num_warps``, ``num_stages``: the sequential state kernel's value block, warps and stages.
    """

    block_v: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    fused: bool | None = None
    out_block_v: int | None = None
    out_num_warps: int | None = None
    split: bool | None = None
    products: str | None = None
    wy: str | None = None
    wy_block: int | None = None
    wy_num_warps: int | None = None


def launch_config(config: ForwardLaunch | None, knobs: dict, where: str) -> ForwardLaunch:
    """``config`` with the loose launch keywords of older calls applied (a ``DeprecationWarning``)."""
    config = config or ForwardLaunch()
    if not knobs:
        return config
    unknown = set(knobs) - {f.name for f in fields(ForwardLaunch)}
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword arguments {sorted(unknown)}")
    warnings.warn(f"{where}: pass launch settings as config=ForwardLaunch({', '.join(sorted(knobs))}=...)",
                  DeprecationWarning, stacklevel=3)
    return replace(config, **knobs)


def gated_delta_forward(q, k, v, g, beta, *, chunk_size, initial_state, output_final_state, resets,
                        config: ForwardLaunch | None = None, **knobs):
    """Checked inputs -> ``(o, final_state)``, launched as ``config`` says (see :class:`ForwardLaunch`)."""
    c = launch_config(config, knobs, "gated_delta_forward")
    block_v, num_warps, num_stages, fused, split = c.block_v, c.num_warps, c.num_stages, c.fused, c.split
    products, wy, wy_block = c.products, c.wy, c.wy_block
    wy = wy or "blocks"
    out_dtype = v.dtype
    B, T, NH, Dk = k.shape
    Dv = v.shape[-1]
    DK, DV = _pow2_at_least_16(Dk), _pow2_at_least_16(Dv)
    C = chunk_size
    N = triton.cdiv(T, C)
    products = products or default_products(out_dtype, N, True if fused is None else fused)
    if products not in PRODUCTS:
        raise ValueError(f"gated delta rule, triton backend: products must be one of {sorted(PRODUCTS)}, "
                         f"got {products!r}")
    dot = PRODUCTS[products]
    fused = default_fused(products) if fused is None else fused
    bf16_dot = products == "bf16"
    if bf16_dot and N < BF16_MIN_CHUNKS:
        raise ValueError(f"gated delta rule, triton backend: bf16 products need >= {BF16_MIN_CHUNKS} chunks of "
                         f"{C} steps (fewer gave wrong results on sm_90 with Triton 3.6), got T={T}; "
                         f"use products='tf32'")
    if bf16_dot and not fused:
        raise ValueError("gated delta rule, triton backend: bf16 products need the fused read-out (fused=False gave "
                         "wrong results and an illegal memory access on sm_90 with Triton 3.6); use products='tf32'")
    # TF32 products and the fused 3xTF32 kernel keep the full-width state (passed the GPU tests at DK = 128); the
    # unfused 3xTF32 one splits it at DK > 64: full width, it spills 192 B per thread at block_v 16, split none (sm_90)
    if split is None:
        split = DK > 64 and (bf16_dot or (products == "tf32x3" and not fused))
    if split and DK < 32:
        raise ValueError(f"gated delta rule, triton backend: split needs padded Dk >= 32, got {DK}")
    DH = DK // 2 if split else DK
    BV = block_v or _default_block_v(B * NH, DK, DV, dot, fused)
    for name, bv in (("block_v", BV), ("out_block_v", c.out_block_v or 16)):
        if bv not in (16, 32, 64, 128) or bv > DV:
            raise ValueError(f"gated delta rule, triton backend: {name} must be a power of two in [16, {DV}], got {bv}")
    if bf16_dot and num_stages == 1:
        # measured on an H100 with Triton 3.6: one stage with 16-bit products gave an illegal memory access (full
        # state) or wrong outputs (split state, relative error 0.8)
        raise ValueError("gated delta rule, triton backend: num_stages=1 is refused for bf16 products (wrong results "
                         "on sm_90 with Triton 3.6); use num_stages >= 2")
    # bf16 products round their operands to bf16 anyway: storing W and U in bf16 halves their traffic
    op_dtype = torch.bfloat16 if bf16_dot else torch.float32
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    r = (resets != 0).to(torch.int8).contiguous() if resets is not None else None
    W, U = wy_terms(k, v, g, beta, r, C, DK, DV, op_dtype, num_warps=c.wy_num_warps, products=products, wy=wy,
                    wy_block=wy_block)
    o = torch.empty(B, T, NH, Dv, dtype=out_dtype, device=v.device)
    SF = torch.empty(B, NH, Dk, Dv, dtype=torch.float32, device=v.device)
    S0 = initial_state.contiguous() if initial_state is not None else None
    Hs = SF if fused else torch.empty(B, NH, N, DK, DV, dtype=op_dtype, device=v.device)
    rr = r if r is not None else g
    launch(_state_kernel, (DV // BV, B * NH), q, k, g, rr, W, U, S0 if S0 is not None else SF, o, SF, Hs, T, N, NH,
           Dk, Dv, DK=DK, DV=DV, DH=DH, SPLIT=split, C=C, BV=BV, HAS_R=r is not None, HAS_S0=S0 is not None,
           FUSED=fused, DOT=dot, num_warps=num_warps or 4, num_stages=num_stages or _default_stages(dot))
    if not fused:
        OBV = c.out_block_v or min(DV, 64)
        launch(_out_kernel, (DV // OBV, N, B * NH), q, k, g, rr, Hs, U, o, T, N, NH, Dk, Dv, DK=DK, DV=DV, DH=DH,
               SPLIT=split, C=C, BV=OBV, HAS_R=r is not None, DOT=dot, num_warps=c.out_num_warps or 4)
    return o, (SF.to(out_dtype) if output_final_state else None)


def triton_gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                            initial_state: Tensor | None = None, output_final_state: bool = True,
                            resets: Tensor | None = None, *, chunk_size: int = 64,
                            check_decay: bool = True, config: ForwardLaunch | None = None,
                            **knobs) -> tuple[Tensor, Tensor | None]:
    """Forward only: same shapes as :func:`chunk_gated_delta_rule`; ``ValueError`` if a gradient is needed.

    fp32 inputs use 3xTF32 products (about fp32 accuracy); bf16 inputs use bf16 products from ``BF16_MIN_CHUNKS``
    chunks on, fp16 inputs and shorter sequences one-pass TF32 products on fp32 operands; the accumulation and the
    state are fp32.
    ``Dk`` and ``Dv`` are handled as zero-masked powers of two >= 16 inside the kernels. ``config``: how the
    kernels are launched (:class:`ForwardLaunch`, defaults measured on an H100).
    """
    config = launch_config(config, knobs, "triton_gated_delta_rule")
    check_gated_delta_inputs(q, k, v, g, beta, initial_state, resets, check_decay)
    # the 16-bit head sizes are the GPU's limit (TRITON_HALF_DIMS); the interpreter (CPU tensors) runs every size
    gpu = {"dk": k.shape[-1], "dv": v.shape[-1], "dtype": v.dtype} if q.is_cuda else {}
    reason = triton_rejects(needs_grad=needs_grad(q, k, v, g, beta, initial_state), chunk_size=chunk_size, **gpu)
    if reason:
        raise ValueError(f"gated delta rule, triton backend: {reason}")
    return gated_delta_forward(q, k, v, g, beta, chunk_size=chunk_size, initial_state=initial_state,
                               output_final_state=output_final_state, resets=resets, config=config)
