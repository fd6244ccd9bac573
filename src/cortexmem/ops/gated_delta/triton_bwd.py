"""Triton backward of the chunkwise gated delta rule: kernels -> launcher -> ``autograd.Function`` -> public fn.

Per chunk (one head; ``S`` the chunk-entry state, notation of :mod:`.chunk` and :mod:`.triton_fwd`):
``u = U - W S``, ``o = diag(d_in) Q S + (Q K^T . M) u``, ``S' = d_c S + K^T diag(d_out) u`` with
``W = L^-1 diag(b d_in) K``, ``U = L^-1 diag(b) V``, ``L = I + A``, ``A_ij = b_i M_ij k_i.k_j`` (``j < i``),
``M_ij = e^(gamma_i - gamma_j)`` on joined ``j <= i``, ``d_in = e^gamma`` while joined to ``S``,
``d_out_j = e^(gamma_C - gamma_j)`` while joined to the chunk end, ``d_c = e^gamma_C`` if no reset in the chunk.

The backward recomputes ``W, U`` (:func:`.triton_fwd.wy_terms`) and the chunk-entry states and pseudo-values ``u``
(the forward's unfused ``_state_kernel``), with one-pass TF32 (16-bit inputs) or 3xTF32 (fp32 inputs) products,
never bf16 ones. Then three kernels (four with 3xTF32):

* ``_bwd_intra_kernel`` (3xTF32 only), parallel over (block of ``Dv``, chunk, batch*head): the two dS-independent
  terms of the reverse step, ``(Q K^T . M)^T dO`` and ``Q^T diag(d_in) dO``, written where the state kernel reads
  them (3xTF32 holds both TF32 parts of every product operand in registers: with them the state kernel spills).
* ``_bwd_state_kernel``, parallel over (block of ``Dv``, batch*head), sequential over chunks in reverse: carries
  ``dS`` (the gradient of the state leaving the chunk) in registers, as two key halves from ``Dk > 64``, stores it
  per chunk, and forms ``du = (Q K^T . M)^T dO + diag(d_out) K dS`` and
  ``dS <- d_c dS + Q^T diag(d_in) dO - W^T du``; what is left after the first chunk is ``d(initial_state)``.
* ``_bwd_dqk_kernel``, parallel over (block of ``Dk``, chunk, batch*head): ``dq``, the direct part of ``dk``,
  ``dW = -du S^T`` and this key block's share of ``d gamma`` (every gate term is linear in the key products).
* ``_bwd_wy_kernel``, parallel over (chunk, batch*head): ``L^-1`` (16-row blocks, as the forward solves), then
  ``dX = L^-T dW``, ``dY = L^-T dU``, ``dA = -tril(dX W^T + dY U^T)``, giving ``dv = b dY``, the rest of ``dk``,
  ``dbeta``, and ``dg`` as the in-chunk reverse cumulative sum of ``d gamma`` (0 at reset steps, whose decay
  acts on a zeroed state).

Registered as the backend ``triton_autograd``, ``auto``'s choice for training on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...ops.precompile import launch
from .checks import check_gated_delta_inputs, triton_autograd_rejects, triton_rejects
from .triton_fwd import (
    PRODUCTS,
    _bdot,
    _block_gates,
    _block_keys_dot,
    _chunk_gates,
    _default_block_v,
    _gates,
    _keys_t,
    _pow2_at_least_16,
    _rows,
    _state_kernel,
    _state_tile,
    gated_delta_forward,
    wy_terms,
)


@triton.jit
def _chunk_decays(gamma, seg, C: tl.constexpr):
    """``d_in [C]``, ``d_out [C]``, ``d_c`` (scalar) of a chunk from its ``gamma`` and segment ids."""
    rc = tl.arange(0, C)
    gam_c = tl.sum(tl.where(rc == C - 1, gamma, 0.0), 0)
    seg_c = tl.max(seg, 0)
    d_in = tl.where(seg == 0, tl.exp(gamma), 0.0)
    d_out = tl.where(seg == seg_c, tl.exp(gam_c - gamma), 0.0)
    d_c = tl.where(seg_c == 0, tl.exp(gam_c), 0.0)
    return d_in, d_out, d_c


@triton.jit
def _bwd_intra_kernel(Q, K, G, R, DO, DSC, DU, T, N, NH, DKR, DVR, DK: tl.constexpr, DV: tl.constexpr,
                      DH: tl.constexpr, SPLIT: tl.constexpr, C: tl.constexpr, BV: tl.constexpr, HAS_R: tl.constexpr,
                      DOT: tl.constexpr):
    # the two terms of the reverse chunk step that do not depend on dS, parallel over chunks:
    # du_intra = (Q K^T . M)^T dO into DU and X = Q^T diag(d_in) dO into this chunk's DSC slot, both read (and
    # overwritten) by _bwd_state_kernel with PRE: it keeps two products per chunk instead of five
    bv = tl.program_id(0)
    n = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    b = bh // NH
    h = bh % NH
    rc = tl.arange(0, C)
    rk = tl.arange(0, DH)
    rv = bv * BV + tl.arange(0, BV)
    gamma, seg = _chunk_gates(G, R, b, h, n, T, NH, rc, C, HAS_R)
    d_in, d_out, d_c = _chunk_decays(gamma, seg, C)
    tc = n * C + rc
    ok = tc < T
    do = tl.load(DO + ((b * T + tc[:, None]) * NH + h) * DVR + rv[None, :], mask=ok[:, None] & (rv[None, :] < DVR),
                 other=0.0).to(tl.float32)
    kq = _bdot(_rows(K, b, h, tc, ok, T, NH, DKR, rk), _keys_t(Q, b, h, tc, ok, T, NH, DKR, rk), DOT)
    if SPLIT:
        kq += _bdot(_rows(K, b, h, tc, ok, T, NH, DKR, DH + rk), _keys_t(Q, b, h, tc, ok, T, NH, DKR, DH + rk), DOT)
    # (Q K^T . M)^T with rows j, columns i: joined j <= i
    link_t = (rc[:, None] <= rc[None, :]) & (seg[:, None] == seg[None, :])
    dec_t = tl.exp(tl.where(link_t, gamma[None, :] - gamma[:, None], float("-inf")))
    tl.store(DU + (bh * N * C + n * C + rc[:, None]) * DV + rv[None, :], _bdot(kq * dec_t, do, DOT))
    dod = do * d_in[:, None]
    x_ptr = DSC + (bh * N + n) * DK * DV + rk[:, None] * DV + rv[None, :]
    tl.store(x_ptr, _bdot(_keys_t(Q, b, h, tc, ok, T, NH, DKR, rk), dod, DOT))
    if SPLIT:
        tl.store(x_ptr + DH * DV, _bdot(_keys_t(Q, b, h, tc, ok, T, NH, DKR, DH + rk), dod, DOT))


@triton.jit
def _bwd_state_kernel(Q, K, G, R, W, DO, DSF, DSC, DU, DS0, T, N, NH, DKR, DVR, DK: tl.constexpr, DV: tl.constexpr,
                      DH: tl.constexpr, SPLIT: tl.constexpr, PRE: tl.constexpr, C: tl.constexpr, BV: tl.constexpr,
                      HAS_R: tl.constexpr, HAS_DSF: tl.constexpr, HAS_S0: tl.constexpr, DOT: tl.constexpr):
    # SPLIT: dS kept as two key halves dS, dS2 of DH = DK / 2 rows (as the forward's state), so that no product
    # takes a [C, DK] or [DK, C] operand. PRE: _bwd_intra_kernel already wrote the dS-independent terms (3xTF32:
    # its split operands in registers spill otherwise, sm_90)
    bv = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // NH
    h = bh % NH
    rc = tl.arange(0, C)
    # the gradient of the state leaving the chunk, as two key halves (the second one only with SPLIT)
    dS, dS2, rk, rk2, rv, s_off, s_mask, s_mask2 = _state_tile(DSF, bh, bv, DKR, DVR, DH, BV, SPLIT, HAS_DSF)
    for i in range(N):
        n = N - 1 - i
        gamma, seg = _chunk_gates(G, R, b, h, n, T, NH, rc, C, HAS_R)
        tc = n * C + rc
        ok = tc < T
        chunk = bh * N + n
        dsc = DSC + chunk * DK * DV + rk[:, None] * DV + rv[None, :]
        if PRE:
            x = tl.load(dsc)  # Q^T diag(d_in) dO, replaced by dS below
            if SPLIT:
                x2 = tl.load(dsc + DH * DV)
        tl.store(dsc, dS)
        if SPLIT:
            tl.store(dsc + DH * DV, dS2)
        k = _rows(K, b, h, tc, ok, T, NH, DKR, rk)  # [C, DH]
        kds = _bdot(k, dS, DOT)
        if not PRE:
            kq = _bdot(k, _keys_t(Q, b, h, tc, ok, T, NH, DKR, rk), DOT)
        if SPLIT:
            k2 = _rows(K, b, h, tc, ok, T, NH, DKR, rk2)
            kds += _bdot(k2, dS2, DOT)
            if not PRE:
                kq += _bdot(k2, _keys_t(Q, b, h, tc, ok, T, NH, DKR, rk2), DOT)
        d_in, d_out, d_c = _chunk_decays(gamma, seg, C)
        du_ptr = DU + (bh * N * C + n * C + rc[:, None]) * DV + rv[None, :]
        if PRE:
            du = tl.load(du_ptr) + d_out[:, None] * kds
        else:
            do = tl.load(DO + ((b * T + tc[:, None]) * NH + h) * DVR + rv[None, :],
                         mask=ok[:, None] & (rv[None, :] < DVR), other=0.0).to(tl.float32)
            # (Q K^T . M)^T with rows j, columns i: joined j <= i
            link_t = (rc[:, None] <= rc[None, :]) & (seg[:, None] == seg[None, :])
            dec_t = tl.exp(tl.where(link_t, gamma[None, :] - gamma[:, None], float("-inf")))
            du = _bdot(kq * dec_t, do, DOT) + d_out[:, None] * kds
            dod = do * d_in[:, None]
            x = _bdot(_keys_t(Q, b, h, tc, ok, T, NH, DKR, rk), dod, DOT)
            if SPLIT:
                x2 = _bdot(_keys_t(Q, b, h, tc, ok, T, NH, DKR, rk2), dod, DOT)
        tl.store(du_ptr, du)
        w_t = W + (bh * N * C + n * C + rc[None, :]) * DK + rk[:, None]  # W^T rows of this key half: [DH, C]
        dS = dS * d_c + x - _bdot(tl.load(w_t), du, DOT)
        if SPLIT:
            dS2 = dS2 * d_c + x2 - _bdot(tl.load(w_t + DH), du, DOT)
    if HAS_S0:
        tl.store(DS0 + s_off, dS.to(DS0.dtype.element_ty), mask=s_mask)
        if SPLIT:
            tl.store(DS0 + s_off + DH * DVR, dS2.to(DS0.dtype.element_ty), mask=s_mask2)


@triton.jit
def _bwd_dqk_kernel(Q, K, G, R, DO, U, H, DSC, DU, DQ, DKD, DW, DGP, T, N, NH, DKR, DVR, DK: tl.constexpr,
                    DV: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_R: tl.constexpr,
                    DOT: tl.constexpr):
    bk = tl.program_id(0)
    n = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    b = bh // NH
    h = bh % NH
    NKB: tl.constexpr = DK // BK
    rc = tl.arange(0, C)
    rk = bk * BK + tl.arange(0, BK)
    gamma, seg = _chunk_gates(G, R, b, h, n, T, NH, rc, C, HAS_R)
    d_in, d_out, d_c = _chunk_decays(gamma, seg, C)
    tc = n * C + rc
    ok = tc < T
    chunk = bh * N + n
    rows = bh * N * C + n * C + rc  # chunk rows in the [BH, N*C, .] buffers
    dos = tl.zeros((C, BK), dtype=tl.float32)  # dO S^T
    uds = tl.zeros((C, BK), dtype=tl.float32)  # u dS'^T
    dus = tl.zeros((C, BK), dtype=tl.float32)  # du S^T
    dou = tl.zeros((C, C), dtype=tl.float32)  # dO u^T
    ddc = tl.zeros((BK,), dtype=tl.float32)  # sum(S . dS') over this key block
    for bv in range(DV // BV):
        rv = bv * BV + tl.arange(0, BV)
        do = tl.load(DO + ((b * T + tc[:, None]) * NH + h) * DVR + rv[None, :], mask=ok[:, None] & (rv[None, :] < DVR),
                     other=0.0).to(tl.float32)
        u = tl.load(U + rows[:, None] * DV + rv[None, :])
        du = tl.load(DU + rows[:, None] * DV + rv[None, :])
        sT = tl.load(H + chunk * DK * DV + rk[None, :] * DV + rv[:, None])  # [BV, BK]
        dsT = tl.load(DSC + chunk * DK * DV + rk[None, :] * DV + rv[:, None])
        dos += _bdot(do, sT, DOT)
        uds += _bdot(u, dsT, DOT)
        dus += _bdot(du, sT, DOT)
        dou += _bdot(do, tl.trans(u), DOT)
        ddc += tl.sum(sT * dsT, 0)
    q = _rows(Q, b, h, tc, ok, T, NH, DKR, rk).to(tl.float32)  # [C, BK]
    k = _rows(K, b, h, tc, ok, T, NH, DKR, rk).to(tl.float32)
    link = (rc[None, :] <= rc[:, None]) & (seg[:, None] == seg[None, :])
    dec = tl.exp(tl.where(link, gamma[:, None] - gamma[None, :], float("-inf")))
    dpm = dou * dec  # M_ij dO_i.u_j
    dq = d_in[:, None] * dos + _bdot(dpm, k, DOT)
    tl.store(DQ + ((b * T + tc[:, None]) * NH + h) * DKR + rk[None, :], dq.to(DQ.dtype.element_ty),
             mask=ok[:, None] & (rk[None, :] < DKR))
    tl.store(DKD + rows[:, None] * DK + rk[None, :], _bdot(tl.trans(dpm), q, DOT) + d_out[:, None] * uds)
    tl.store(DW + rows[:, None] * DK + rk[None, :], -dus)
    # d gamma, this key block's share: M through the read-out, d_in, d_out and d_c (gamma_C is the last row's)
    e = _bdot(q, tl.trans(k), DOT) * dpm
    kuds = tl.sum(k * uds, 1)
    dgam = tl.sum(e, 1) - tl.sum(e, 0) + d_in * tl.sum(q * dos, 1) - d_out * kuds
    last = tl.sum(d_out * kuds, 0) + d_c * tl.sum(ddc, 0)
    dgam += tl.where(rc == C - 1, last, 0.0)
    tl.store(DGP + (bh * NKB + bk) * N * C + n * C + rc, dgam)


@triton.jit
def _bwd_wy_kernel(K, V, G, BETA, R, W, U, DU, DW, DKD, DGP, LI, DKO, DVO, DB, DG, T, N, NH, DKR, DVR,
                   DK: tl.constexpr, DV: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   NKQ: tl.constexpr, HAS_R: tl.constexpr, DOT: tl.constexpr):
    # NKQ: the number of key blocks of the dq/dk kernel, each of which wrote a share of d gamma
    n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // NH
    h = bh % NH
    NKB: tl.constexpr = DK // BK
    NC = N * C
    rc = tl.arange(0, C)
    rb = tl.arange(0, 16)
    g_c, r_c = _gates(G, R, b, h, n * C + rc, T, NH, HAS_R)
    rows = bh * NC + n * C + rc
    li_base = LI + bh * NC * C + n * C * C
    eye = (rb[:, None] == rb[None, :]).to(tl.float32)
    # L^-1 = (I + A)^-1 by 16-row blocks: the rows of block ib solve T_ii (E_ib - sum_{jb < ib} A_{ib,jb} L^-1_jb)
    for ib in range(C // 16):
        ri = ib * 16 + rb
        ti = n * C + ri
        oki = ti < T
        gam_i, seg_i = _block_gates(G, R, b, h, n * C, ib * 16, g_c, r_c, rc, rb, T, NH, HAS_R)
        beta_i = tl.load(BETA + (b * T + ti) * NH + h, mask=oki, other=0.0).to(tl.float32)
        rhs = (ri[:, None] == rc[None, :]).to(tl.float32)  # [16, C]
        for jb in range(ib):
            rj = jb * 16 + rb
            tj = n * C + rj
            gam_j, seg_j = _block_gates(G, R, b, h, n * C, jb * 16, g_c, r_c, rc, rb, T, NH, HAS_R)
            dec = tl.exp(tl.where(seg_j[None, :] == seg_i[:, None], gam_i[:, None] - gam_j[None, :], float("-inf")))
            a_ij = _block_keys_dot(K, b, h, ti, oki, tj, tj < T, T, NH, DKR, DK, BK, DOT, True) * dec * beta_i[:, None]
            rhs -= _bdot(a_ij, tl.load(li_base + rj[:, None] * C + rc[None, :]), DOT)
        link_d = (seg_i[:, None] == seg_i[None, :]) & (rb[None, :] < rb[:, None])
        dec_d = tl.exp(tl.where(link_d, gam_i[:, None] - gam_i[None, :], float("-inf")))
        m = -_block_keys_dot(K, b, h, ti, oki, ti, oki, T, NH, DKR, DK, BK, DOT, True) * dec_d * beta_i[:, None]
        for i in range(1, 16):  # forward substitution of the 16x16 diagonal block, row by row
            row = tl.sum(tl.where(rb[:, None] == i, m, 0.0), 0)
            row = row + tl.sum(row[:, None] * m, 0)
            m = tl.where(rb[:, None] == i, row[None, :], m)
        tl.store(li_base + ri[:, None] * C + rc[None, :], _bdot(m + eye, rhs, DOT))
        tl.debug_barrier()  # later blocks, and the transposed read below, use rows written by other threads
    tc = n * C + rc
    ok = tc < T
    gamma, seg = tl.cumsum(g_c, 0), tl.cumsum(r_c, 0)
    d_in = tl.where(seg == 0, tl.exp(gamma), 0.0)
    beta = tl.load(BETA + (b * T + tc) * NH + h, mask=ok, other=0.0).to(tl.float32)
    linvT = tl.load(li_base + rc[None, :] * C + rc[:, None])  # (L^-1)^T
    dA = tl.zeros((C, C), dtype=tl.float32)  # -(dX W^T + dY U^T), strictly lower part used
    dbeta = tl.zeros((C,), dtype=tl.float32)
    for bv in range(DV // BV):
        rv = bv * BV + tl.arange(0, BV)
        dy = _bdot(linvT, tl.load(DU + rows[:, None] * DV + rv[None, :]), DOT)
        dA -= _bdot(dy, tl.trans(tl.load(U + rows[:, None] * DV + rv[None, :])), DOT)
        v_mask = ok[:, None] & (rv[None, :] < DVR)
        v = tl.load(V + ((b * T + tc[:, None]) * NH + h) * DVR + rv[None, :], mask=v_mask, other=0.0).to(tl.float32)
        dbeta += tl.sum(dy * v, 1)
        dv = beta[:, None] * dy
        tl.store(DVO + ((b * T + tc[:, None]) * NH + h) * DVR + rv[None, :], dv.to(DVO.dtype.element_ty), mask=v_mask)
    kk = tl.zeros((C, C), dtype=tl.float32)
    xk = tl.zeros((C,), dtype=tl.float32)  # dX_i . k_i
    for kb in range(NKB):
        rk = kb * BK + tl.arange(0, BK)
        dx = _bdot(linvT, tl.load(DW + rows[:, None] * DK + rk[None, :]), DOT)
        dA -= _bdot(dx, tl.trans(tl.load(W + rows[:, None] * DK + rk[None, :])), DOT)
        k = _rows(K, b, h, tc, ok, T, NH, DKR, rk).to(tl.float32)
        kk += _bdot(k, tl.trans(k), DOT)
        xk += tl.sum(dx * k, 1)
    link = (rc[None, :] < rc[:, None]) & (seg[:, None] == seg[None, :])
    dec = tl.exp(tl.where(link, gamma[:, None] - gamma[None, :], float("-inf")))
    dam = dA * dec  # dA_ij M_ij on the strictly lower joined pairs (0 elsewhere)
    e = dam * kk * beta[:, None]  # dM_ij M_ij through A
    dbeta += tl.sum(dam * kk, 1) + d_in * xk
    dgam = tl.sum(e, 1) - tl.sum(e, 0) + beta * d_in * xk
    for kb in range(NKQ):
        dgam += tl.load(DGP + (bh * NKQ + kb) * NC + n * C + rc)
    gmat = dam * beta[:, None]  # d(k_i.k_j)
    for kb in range(NKB):
        rk = kb * BK + tl.arange(0, BK)
        dx = _bdot(linvT, tl.load(DW + rows[:, None] * DK + rk[None, :]), DOT)
        k = _rows(K, b, h, tc, ok, T, NH, DKR, rk).to(tl.float32)
        dk = tl.load(DKD + rows[:, None] * DK + rk[None, :]) + (beta * d_in)[:, None] * dx
        dk += _bdot(gmat, k, DOT) + _bdot(tl.trans(gmat), k, DOT)
        tl.store(DKO + ((b * T + tc[:, None]) * NH + h) * DKR + rk[None, :], dk.to(DKO.dtype.element_ty),
                 mask=ok[:, None] & (rk[None, :] < DKR))
    # gamma_i = g_1 + ... + g_i (reset steps zeroed): dg_t = sum_{i >= t} dgamma_i, 0 at a reset step
    dg = tl.sum(dgam, 0) - tl.cumsum(dgam, 0) + dgam
    dg = tl.where(r_c != 0, 0.0, dg)
    tl.store(DG + (b * T + tc) * NH + h, dg.to(DG.dtype.element_ty), mask=ok)
    tl.store(DB + (b * T + tc) * NH + h, dbeta.to(DB.dtype.element_ty), mask=ok)


def backward_products(dtype: torch.dtype) -> str:
    """Product mode of the backward: ``tf32`` for 16-bit inputs, ``tf32x3`` otherwise (never bf16 products)."""
    return "tf32" if dtype in (torch.bfloat16, torch.float16) else "tf32x3"


def backward_config(DK: int, DV: int, n_bh: int, dot: int) -> dict:
    """Launch sizes of the backward kernels: ``(block(s), warps)`` per kernel, picked from their sm_90 compile
    (``benchmarks/gated_delta_triton_compile.py --backward``: no register spills at C = 64, Dk = Dv = 64 and 128).

    ``split``: the reverse state kernel keeps dS as two key halves (Dk > 64). 3xTF32 (fp32 inputs) splits every
    product operand into two TF32 parts in registers, so it takes ``intra``: the dS-independent terms come from
    ``_bwd_intra_kernel`` (parallel over chunks; ``None`` for one-pass TF32). The dq/dk and WY blocks are the same
    in both modes and never 16 wide: 16-wide dot tiles with 8 warps crashed on an H100 (Triton 3.6) with an illegal
    memory access, in fp32 and bf16, while these blocks matched the fp64 reference there.
    """
    split = DK > 64
    # V-blocks of 32 only where they leave >= 128 programs; the 16-row-narrower state spills at Dk = 128
    state_bv = min(DV, 32 if DK <= 64 and n_bh * (DV // 32) >= 128 else 16)
    intra = None if dot == PRODUCTS["tf32"] else (min(DV, 32), 4)
    return dict(state=(state_bv, 4), split=split, intra=intra, dqk=(min(DK, 64), min(DV, 32), 8),
                wy=(min(DK, 32), min(DV, 64), 8))


def gated_delta_backward(q, k, v, g, beta, initial_state, resets, do, dsf, *, chunk_size, need_ds0, config=None):
    """Gradients ``(dq, dk, dv, dg, dbeta, d_initial_state or None)`` of the chunkwise rule, for ``d o`` and
    ``d final_state`` (either may be None: zero)."""
    B, T, NH, Dk = k.shape
    Dv = v.shape[-1]
    DK, DV = _pow2_at_least_16(Dk), _pow2_at_least_16(Dv)
    C = chunk_size
    N = triton.cdiv(T, C)
    BH = B * NH
    dot = PRODUCTS[backward_products(v.dtype)]
    dev = v.device
    f32 = torch.float32
    q, k, v, g, beta = (x.contiguous() for x in (q, k, v, g, beta))
    r = (resets != 0).to(torch.int8).contiguous() if resets is not None else None
    rr = r if r is not None else g
    has_r = r is not None
    # recompute: WY terms, then the chunk-entry states Hs and pseudo-values u (written over a copy of U)
    W, U = wy_terms(k, v, g, beta, r, C, DK, DV, f32, products=backward_products(v.dtype))
    u = U.clone()
    Hs = torch.empty(B, NH, N, DK, DV, dtype=f32, device=dev)
    SF = torch.empty(B, NH, Dk, Dv, dtype=f32, device=dev)
    S0 = initial_state.contiguous() if initial_state is not None else None
    # the forward's unfused state kernel, split into key halves at Dk > 64 (no spills on sm_90, see its launcher)
    split = DK > 64
    DH = DK // 2 if split else DK
    BV = _default_block_v(BH, DK, DV, dot, fused=False)
    launch(_state_kernel, (DV // BV, BH), q, k, g, rr, W, u, S0 if S0 is not None else SF, u, SF, Hs, T, N, NH,
           Dk, Dv, DK=DK, DV=DV, DH=DH, SPLIT=split, C=C, BV=BV, HAS_R=has_r, HAS_S0=S0 is not None, FUSED=False,
           DOT=dot, num_warps=4, num_stages=1)
    do = torch.zeros_like(v) if do is None else do.contiguous()
    dsf = dsf.to(f32).contiguous() if dsf is not None else None
    dH = torch.empty(B, NH, N, DK, DV, dtype=f32, device=dev)
    dU = torch.empty(B, NH, N * C, DV, dtype=f32, device=dev)
    ds0 = torch.empty(B, NH, Dk, Dv, dtype=initial_state.dtype, device=dev) if need_ds0 else None
    cfg = config or backward_config(DK, DV, BH, dot)
    SBV, state_warps = cfg["state"]
    split = cfg["split"]
    DH = DK // 2 if split else DK
    if cfg["intra"] is not None:
        IBV, intra_warps = cfg["intra"]
        launch(_bwd_intra_kernel, (DV // IBV, N, BH), q, k, g, rr, do, dH, dU, T, N, NH, Dk, Dv, DK=DK, DV=DV,
               DH=DH, SPLIT=split, C=C, BV=IBV, HAS_R=has_r, DOT=dot, num_warps=intra_warps, num_stages=1)
    launch(_bwd_state_kernel, (DV // SBV, BH), q, k, g, rr, W, do, dsf if dsf is not None else SF, dH, dU,
           ds0 if ds0 is not None else SF, T, N, NH, Dk, Dv, DK=DK, DV=DV, DH=DH, SPLIT=split,
           PRE=cfg["intra"] is not None, C=C, BV=SBV, HAS_R=has_r, HAS_DSF=dsf is not None, HAS_S0=ds0 is not None,
           DOT=dot, num_warps=state_warps, num_stages=1)
    BK, QBV, qk_warps = cfg["dqk"]
    dq = torch.empty_like(q)
    dkd = torch.empty(B, NH, N * C, DK, dtype=f32, device=dev)
    dW = torch.empty(B, NH, N * C, DK, dtype=f32, device=dev)
    dgp = torch.empty(BH, DK // BK, N * C, dtype=f32, device=dev)
    launch(_bwd_dqk_kernel, (DK // BK, N, BH), q, k, g, rr, do, u, Hs, dH, dU, dq, dkd, dW, dgp, T, N, NH, Dk, Dv,
           DK=DK, DV=DV, C=C, BK=BK, BV=QBV, HAS_R=has_r, DOT=dot, num_warps=qk_warps, num_stages=1)
    WBK, WBV, wy_warps = cfg["wy"]
    dk, dv, db, dg = (torch.empty_like(x) for x in (k, v, beta, g))
    li = torch.empty(BH, N * C, C, dtype=f32, device=dev)
    launch(_bwd_wy_kernel, (N, BH), k, v, g, beta, rr, W, U, dU, dW, dkd, dgp, li, dk, dv, db, dg, T, N, NH, Dk, Dv,
           DK=DK, DV=DV, C=C, BK=WBK, BV=WBV, NKQ=DK // BK, HAS_R=has_r, DOT=dot, num_warps=wy_warps, num_stages=1)
    return dq, dk, dv, dg, db, ds0


class GatedDeltaTriton(torch.autograd.Function):
    """Triton forward (:func:`.triton_fwd.gated_delta_forward`) and Triton backward (:func:`gated_delta_backward`)."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, initial_state, resets, chunk_size):
        o, sf = gated_delta_forward(q, k, v, g, beta, chunk_size=chunk_size, initial_state=initial_state,
                                    output_final_state=True, resets=resets)
        ctx.save_for_backward(q, k, v, g, beta, initial_state, resets)
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        return o, sf

    @staticmethod
    def backward(ctx, do, dsf):
        q, k, v, g, beta, initial_state, resets = ctx.saved_tensors
        need_ds0 = initial_state is not None and ctx.needs_input_grad[5]
        dq, dk, dv, dg, db, ds0 = gated_delta_backward(q, k, v, g, beta, initial_state, resets, do, dsf,
                                                       chunk_size=ctx.chunk_size, need_ds0=need_ds0)
        return dq, dk, dv, dg, db, ds0, None, None


def triton_gated_delta_rule_autograd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                                     initial_state: Tensor | None = None, output_final_state: bool = True,
                                     resets: Tensor | None = None, *, chunk_size: int = 64,
                                     check_decay: bool = True) -> tuple[Tensor, Tensor | None]:
    """Differentiable Triton gated delta rule: shapes as :func:`chunk_gated_delta_rule`; gradients of q, k, v, g,
    beta and the initial state by Triton kernels (fp32 accumulation)."""
    check_gated_delta_inputs(q, k, v, g, beta, initial_state, resets, check_decay)
    # the narrow-head limit is the GPU's (sm_90 dot tiles); the interpreter (CPU tensors) runs every head size
    reason = (triton_autograd_rejects(chunk_size=chunk_size, dk=k.shape[-1], dv=v.shape[-1], dtype=v.dtype) if q.is_cuda
              else triton_rejects(chunk_size=chunk_size, dk=k.shape[-1]))
    if reason:
        raise ValueError(f"gated delta rule, triton_autograd backend: {reason}")
    o, sf = GatedDeltaTriton.apply(q, k, v, g, beta, initial_state, resets, chunk_size)
    return o, (sf if output_final_state else None)
