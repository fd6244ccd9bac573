"""Triton chunkwise mLSTM, forward and backward: kernels -> launchers -> autograd Function -> public fn.

Same contract and stabiliser as :func:`mlstm_chunkwise` (see there for the chunk algebra). Per chunk of ``L`` steps
with incoming state ``(C, n, m)`` the end state is the stabilised state of the chunk's last (real) step ``e``::

    C_out = g_e C + sum_s P_es k_s v_s^T,   n_out = g_e n + sum_s P_es k_s,   m_out = m_e

(``P_ts = exp(D_ts - m_t)``, ``g_t = exp(a_t - m_t)`` or 0 after a reset), so the forward is

1. ``_fwd_state_kernel``: one program per (batch * head, ``dv`` tile, ``dk`` tile) walks the chunks in order and
   stores every chunk's incoming state (the carry, sequential over ``T / L`` chunks);
2. ``_fwd_out_kernel``: parallel over (batch * head, chunk, ``dv`` tile), the ``L x L`` intra-chunk part plus the
   inter-chunk read-out ``g_t q_t C``, normalised; it saves per step ``m_t``, ``q.n`` and two flags.

The backward is their reverse. ``h`` does not depend on the stabiliser ``m`` except through the clipped
``exp(-m)`` of the normaliser, and the stored states are ``exp(-m)`` times the true ones; so the gradient reaching
``m_t`` is known in closed form (no cancelling sums) and the log-decay gradient follows the identity
``dF_t = (normaliser term)_t + [t = e] dm_out - d log i_t``, with ``d log f`` its reverse cumulative sum per reset
segment. ``_bwd_state_kernel`` carries ``dC, dn`` backwards over the chunks; the scalar ``dm`` carry (a segmented
reverse sum over chunks) is done in torch; then, parallel over chunks, ``_bwd_qk_kernel`` gives ``dq, dk`` and
the gate gradients (it reduces over all of ``dv``) and ``_bwd_v_kernel`` gives ``dv`` per ``dv`` tile. All
products run in fp32 as three TF32 passes (fp32-level accuracy); bf16/fp16 inputs are
widened on load, every state and accumulator is fp32. 3xTF32 holds a product's fp32 left operand in registers as
two TF32 parts, so the kernels take dk in blocks (``BLOCK_K``) and accumulate over them: no sm_90 register spills
at dk <= 128 (``benchmarks/mlstm_triton_compile.py``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...ops.precompile import dry_run_active, launch
from .chunk import _check_shapes
from .naive import MAX_NEG_M

MAX_DK = 128  # q/k head size (padded): the backward holds several L x DK fp32 tiles
MAX_DV = 256  # v head size (padded): tiled by BV everywhere
MAX_CHUNK = 64  # the L x L tiles of the backward stay in registers up to here
_CLIP = tl.constexpr(MAX_NEG_M)  # a jit function reads only constexpr globals
#: warps per program of each kernel (the compile check in benchmarks/mlstm_triton_compile.py reads them too)
NUM_WARPS = {"fwd_state": 4, "fwd_out": 8, "bwd_state": 8, "bwd_qk": 8, "bwd_v": 4}
#: dk block of each kernel but the reverse carry: 3xTF32 keeps a product's fp32 left operand in registers as two
#: TF32 parts (about K registers per thread for an [L, K] operand), so K is kept at 64 or below. The forward carry
#: takes 16-row dk tiles: the only size with no sm_90 spills under both Triton 3.6 (the GPU machine's) and 3.9
#: (32 spilled 36-140 B under 3.6, 64 spilled 136-160 B)
BLOCK_K = {"fwd_state": 16, "fwd_out": 32, "bwd_qk": 16, "bwd_v": 32}


@triton.jit
def _segments(LI, LF, RST, base_t, b, t0, T, L: tl.constexpr, HAS_R: tl.constexpr):
    """One chunk's gate algebra: step index, validity, log i, ``same`` (s <= t, no reset in (s, t]), ``keep``
    (no reset in [chunk start, t]) and ``F`` (log f summed over t's own segment, a masked sum like the torch op)."""
    i = tl.arange(0, L)
    t = t0 + i
    valid = t < T
    lf = tl.load(LF + base_t + t, mask=valid, other=0.0).to(tl.float32)
    li = tl.load(LI + base_t + t, mask=valid, other=0.0).to(tl.float32)
    causal = i[None, :] <= i[:, None]
    if HAS_R:
        r = tl.load(RST + b.to(tl.int64) * T + t, mask=valid, other=0).to(tl.int32)
        count = tl.sum(tl.where(causal, r[None, :], 0), 1)
        same = causal & (count[:, None] == count[None, :]) & valid[None, :]
        keep = count == 0
    else:
        same = causal & valid[None, :]
        keep = i >= 0
    F = tl.sum(tl.where(same, lf[None, :], 0.0), 1)
    return i, valid, li, same, keep, F


@triton.jit
def _log_weights(li, same, keep, F, m_in):
    """``D_ts`` (-inf off the segment), its row max, the initial-state log-weight ``a_t`` and the stabiliser."""
    D = tl.where(same, F[:, None] - (F - li)[None, :], float("-inf"))
    d_max = tl.max(D, 1)
    a = F + tl.where(keep, m_in, 0.0)
    m = tl.where(a >= d_max, a, d_max)
    return D, d_max, a, m


@triton.jit
def _fwd_state_kernel(K, V, LI, LF, RST, C0, N0, M0, CS, NS, MS, T, NC, NH, DKR, DVR,
                      L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_R: tl.constexpr):
    """The carry of one (batch * head, dk tile, dv tile): the rows of ``C`` and ``n`` are independent."""
    bh = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    b = bh // NH
    dk = tl.program_id(2) * BK + tl.arange(0, BK)
    dv = j * BV + tl.arange(0, BV)
    mk, mv = dk < DKR, dv < DVR
    mkv = mk[:, None] & mv[None, :]
    cidx = dk[:, None] * DVR + dv[None, :]
    C = tl.load(C0 + bh * DKR * DVR + cidx, mask=mkv, other=0.0).to(tl.float32)
    n = tl.load(N0 + bh * DKR + dk, mask=mk, other=0.0).to(tl.float32)
    m = tl.load(M0 + bh).to(tl.float32)
    first = (dk * 0 + j) == 0  # n is the same in every dv tile: one program stores it (a block mask)
    for c in range(NC):
        sc = bh * (NC + 1) + c
        tl.store(CS + sc * DKR * DVR + cidx, C, mask=mkv)
        tl.store(NS + sc * DKR + dk, n, mask=mk & first)
        tl.store(MS + sc, m)  # the same value from every tile
        t0 = c * L
        i, valid, li, same, keep, F = _segments(LI, LF, RST, bh * T, b, t0, T, L, HAS_R)
        D, d_max, a, m_t = _log_weights(li, same, keep, F, m)
        last = i == tl.minimum(T - t0, L) - 1  # the chunk's last real step
        p_e = tl.exp(tl.max(tl.where(last[:, None], D, float("-inf")), 0) - tl.sum(tl.where(last, m_t, 0.0)))
        g_e = tl.sum(tl.where(last & keep, tl.exp(a - m_t), 0.0))
        rows = (bh * T + t0 + i)[:, None]
        kp = tl.load(K + rows * DKR + dk[None, :], mask=valid[:, None] & mk[None, :], other=0.0).to(tl.float32)
        kp = kp * p_e[:, None]
        vv = tl.load(V + rows * DVR + dv[None, :], mask=valid[:, None] & mv[None, :], other=0.0).to(tl.float32)
        C = g_e * C + tl.dot(tl.trans(kp), vv, input_precision="tf32x3")
        n = g_e * n + tl.sum(kp, 0)
        m = tl.sum(tl.where(last, m_t, 0.0))
    sc = bh * (NC + 1) + NC
    tl.store(CS + sc * DKR * DVR + cidx, C, mask=mkv)
    tl.store(NS + sc * DKR + dk, n, mask=mk & first)
    tl.store(MS + sc, m)  # the same value from every tile


@triton.jit
def _fwd_out_kernel(Q, K, V, LI, LF, RST, CS, NS, MS, H, MT, QN, FL, T, NC, NH, DKR, DVR,
                    L: tl.constexpr, DK: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_R: tl.constexpr,
                    SAVE: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    j = tl.program_id(2)
    b = bh // NH
    t0 = c * L
    dv = j * BV + tl.arange(0, BV)
    mv = dv < DVR
    sc = bh * (NC + 1) + c
    i, valid, li, same, keep, F = _segments(LI, LF, RST, bh * T, b, t0, T, L, HAS_R)
    D, d_max, a, m_t = _log_weights(li, same, keep, F, tl.load(MS + sc))
    P = tl.where(same & valid[:, None], tl.exp(D - m_t[:, None]), 0.0)
    g = tl.where(keep & valid, tl.exp(a - m_t), 0.0)
    rows = (bh * T + t0 + i)[:, None]
    # q k^T, q.n_in and q C_in over dk blocks of BK (a [L, DK] fp32 left operand would spill at DK = 128)
    S = tl.zeros((L, L), dtype=tl.float32)
    qn_in = tl.zeros((L,), dtype=tl.float32)
    inter = tl.zeros((L, BV), dtype=tl.float32)
    for kb in range(DK // BK):
        dk = kb * BK + tl.arange(0, BK)
        mk = dk < DKR
        mrk = valid[:, None] & mk[None, :]
        q = tl.load(Q + rows * DKR + dk[None, :], mask=mrk, other=0.0).to(tl.float32)
        k = tl.load(K + rows * DKR + dk[None, :], mask=mrk, other=0.0).to(tl.float32)
        S += tl.dot(q, tl.trans(k), input_precision="tf32x3")
        qn_in += tl.sum(q * tl.load(NS + sc * DKR + dk, mask=mk, other=0.0)[None, :], 1)
        C_in = tl.load(CS + sc * DKR * DVR + dk[:, None] * DVR + dv[None, :], mask=mk[:, None] & mv[None, :],
                       other=0.0)
        inter += tl.dot(q, C_in, input_precision="tf32x3")
    S = S * P  # (L, L)
    qn = tl.sum(S, 1) + g * qn_in
    vv = tl.load(V + rows * DVR + dv[None, :], mask=valid[:, None] & mv[None, :], other=0.0).to(tl.float32)
    num = tl.dot(S, vv, input_precision="tf32x3") + g[:, None] * inter
    floor = tl.exp(tl.minimum(-m_t, _CLIP))
    den = tl.where(tl.abs(qn) >= floor, tl.abs(qn), floor)
    h = num / den[:, None]
    tl.store(H + rows * DVR + dv[None, :], h.to(H.dtype.element_ty), mask=valid[:, None] & mv[None, :])
    if SAVE:
        first = valid & ((i * 0 + j) == 0)
        tl.store(MT + bh * T + t0 + i, m_t, mask=first)
        tl.store(QN + bh * T + t0 + i, qn, mask=first)
        # bit 0: the stabiliser took the initial-state path a_t; bit 1: that path is still live (no reset yet)
        flags = tl.where(a >= d_max, 1, 0) + tl.where(keep, 2, 0)
        tl.store(FL + bh * T + t0 + i, flags.to(tl.int8), mask=first)


@triton.jit
def _bwd_state_kernel(Q, LI, LF, RST, CS, NS, MS, MT, DN, DQN, DCT, DNT, DCS, DNS, XP, T, NC, NH, NV, DKR, DVR,
                      L: tl.constexpr, DK: tl.constexpr, BV: tl.constexpr, HAS_R: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    b = bh // NH
    dk = tl.arange(0, DK)
    dv = j * BV + tl.arange(0, BV)
    mk, mv = dk < DKR, dv < DVR
    mkv = mk[:, None] & mv[None, :]
    cidx = dk[:, None] * DVR + dv[None, :]
    first = (dk * 0 + j) == 0
    dC = tl.load(DCT + bh * DKR * DVR + cidx, mask=mkv, other=0.0).to(tl.float32)
    dn = tl.load(DNT + bh * DKR + dk, mask=mk, other=0.0).to(tl.float32)  # every tile carries it, one stores it
    for cc in range(NC):
        c = NC - 1 - cc
        sc = bh * (NC + 1) + c
        # the gradient at the chunk's outgoing state (= the next chunk's incoming one) and, for the dm carry,
        # this tile's share of <dC, C> + <dn, n> there
        tl.store(DCS + (sc + 1) * DKR * DVR + cidx, dC, mask=mkv)
        tl.store(DNS + (sc + 1) * DKR + dk, dn, mask=mk & first)
        C_out = tl.load(CS + (sc + 1) * DKR * DVR + cidx, mask=mkv, other=0.0)
        n_out = tl.load(NS + (sc + 1) * DKR + dk, mask=mk, other=0.0)
        x = tl.sum(tl.sum(dC * C_out, 1), 0) + tl.sum(tl.where(first, dn * n_out, 0.0), 0)
        tl.store(XP + (bh * NV + j) * (NC + 1) + c + 1, x)
        t0 = c * L
        i, valid, li, same, keep, F = _segments(LI, LF, RST, bh * T, b, t0, T, L, HAS_R)
        m_t = tl.load(MT + bh * T + t0 + i, mask=valid, other=0.0)
        a = F + tl.where(keep, tl.load(MS + sc), 0.0)
        g = tl.where(keep & valid, tl.exp(a - m_t), 0.0)
        last = i == tl.minimum(T - t0, L) - 1
        g_e = tl.sum(tl.where(last, g, 0.0))
        rows = (bh * T + t0 + i)[:, None]
        qg = tl.load(Q + rows * DKR + dk[None, :], mask=valid[:, None] & mk[None, :], other=0.0).to(tl.float32)
        qg = qg * g[:, None]
        dN = tl.load(DN + rows * DVR + dv[None, :], mask=valid[:, None] & mv[None, :], other=0.0)
        dqn = tl.load(DQN + bh * T + t0 + i, mask=valid, other=0.0)
        dC = g_e * dC + tl.dot(tl.trans(qg), dN, input_precision="tf32x3")
        dn = g_e * dn + tl.sum(qg * dqn[:, None], 0)
    sc = bh * (NC + 1)
    tl.store(DCS + sc * DKR * DVR + cidx, dC, mask=mkv)
    tl.store(DNS + sc * DKR + dk, dn, mask=mk & first)
    C_in = tl.load(CS + sc * DKR * DVR + cidx, mask=mkv, other=0.0)
    n_in = tl.load(NS + sc * DKR + dk, mask=mk, other=0.0)
    x = tl.sum(tl.sum(dC * C_in, 1), 0) + tl.sum(tl.where(first, dn * n_in, 0.0), 0)
    tl.store(XP + (bh * NV + j) * (NC + 1), x)


@triton.jit
def _bwd_qk_kernel(Q, K, V, LI, LF, RST, CS, NS, MS, MT, FL, DN, DQN, DCS, DNS, DFX, DMT, DQ, DK_, DLI, DLF,
                   T, NC, NH, DKR, DVR, L: tl.constexpr, DK: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   NVT: tl.constexpr, HAS_R: tl.constexpr):
    """dq, dk, d log i, d log f of one chunk (all of dv is reduced here; dv itself is ``_bwd_v_kernel``).

    Two passes keep the live set small: the ``L x L`` terms first (``dS`` over dv tiles, ``S`` over dk blocks),
    then dq and dk one dk block of ``BK`` at a time (each with its own reduction over dv)."""
    bh = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    b = bh // NH
    t0 = c * L
    sc = bh * (NC + 1) + c
    i, valid, li, same, keep, F = _segments(LI, LF, RST, bh * T, b, t0, T, L, HAS_R)
    st = bh * T + t0 + i
    rows = st[:, None]
    dS = tl.zeros((L, L), dtype=tl.float32)  # dS_ts = dN_t . v_s
    for jv in range(NVT):
        dv = jv * BV + tl.arange(0, BV)
        mrv = valid[:, None] & (dv < DVR)[None, :]
        vv = tl.load(V + rows * DVR + dv[None, :], mask=mrv, other=0.0).to(tl.float32)
        dN = tl.load(DN + rows * DVR + dv[None, :], mask=mrv, other=0.0)
        dS += tl.dot(dN, tl.trans(vv), input_precision="tf32x3")
    S = tl.zeros((L, L), dtype=tl.float32)  # q_t . k_s
    for kb in range(DK // BK):
        dk = kb * BK + tl.arange(0, BK)
        mrk = valid[:, None] & (dk < DKR)[None, :]
        q = tl.load(Q + rows * DKR + dk[None, :], mask=mrk, other=0.0).to(tl.float32)
        k = tl.load(K + rows * DKR + dk[None, :], mask=mrk, other=0.0).to(tl.float32)
        S += tl.dot(q, tl.trans(k), input_precision="tf32x3")
    m_t = tl.load(MT + st, mask=valid, other=0.0)
    dqn = tl.load(DQN + st, mask=valid, other=0.0)
    g = tl.where(keep & valid, tl.exp(F + tl.where(keep, tl.load(MS + sc), 0.0) - m_t), 0.0)
    D = tl.where(same, F[:, None] - (F - li)[None, :], float("-inf"))
    live = same & valid[:, None]
    P = tl.where(live, tl.exp(D - m_t[:, None]), 0.0)
    # the stabiliser's gradient goes to the D_ts it took (max over s) where it did not take a_t
    took_a = (tl.load(FL + st, mask=valid, other=0).to(tl.int32) & 1) != 0
    dD = tl.where(live & (D == tl.max(D, 1)[:, None]) & (~took_a)[:, None],
                  tl.load(DMT + st, mask=valid, other=0.0)[:, None], 0.0)
    last = i == tl.minimum(T - t0, L) - 1
    p_e = tl.sum(tl.where(last[:, None], P, 0.0), 0)  # (L,) indexed by s
    dQK = (dS + dqn[:, None]) * P
    # d D_ts through P: dS_ts S_ts here, the carry's row e (through C_out, n_out) per dk block below
    dli = tl.sum(dD + dQK * S, 0)
    for kb in range(DK // BK):
        dk = kb * BK + tl.arange(0, BK)
        mk = dk < DKR
        mrk = valid[:, None] & mk[None, :]
        # dN C_in^T (the read-out's share of dq) and v dC_out^T (the carry's share of dk) over all of dv
        dq = tl.zeros((L, BK), dtype=tl.float32)
        dk_c = tl.zeros((L, BK), dtype=tl.float32)
        for jv in range(NVT):
            dv = jv * BV + tl.arange(0, BV)
            mv = dv < DVR
            mrv = valid[:, None] & mv[None, :]
            mkv = mk[:, None] & mv[None, :]
            vv = tl.load(V + rows * DVR + dv[None, :], mask=mrv, other=0.0).to(tl.float32)
            dN = tl.load(DN + rows * DVR + dv[None, :], mask=mrv, other=0.0)
            C_in = tl.load(CS + sc * DKR * DVR + dk[:, None] * DVR + dv[None, :], mask=mkv, other=0.0)
            dC_out = tl.load(DCS + (sc + 1) * DKR * DVR + dk[:, None] * DVR + dv[None, :], mask=mkv, other=0.0)
            dq += tl.dot(dN, tl.trans(C_in), input_precision="tf32x3")
            dk_c += tl.dot(vv, tl.trans(dC_out), input_precision="tf32x3")
        n_in = tl.load(NS + sc * DKR + dk, mask=mk, other=0.0)
        dn_out = tl.load(DNS + (sc + 1) * DKR + dk, mask=mk, other=0.0)
        q = tl.load(Q + rows * DKR + dk[None, :], mask=mrk, other=0.0).to(tl.float32)
        k = tl.load(K + rows * DKR + dk[None, :], mask=mrk, other=0.0).to(tl.float32)
        dq = g[:, None] * (dq + dqn[:, None] * n_in[None, :])  # the read-out's g_t (C_in dN_t + n_in dqn_t)
        dq += tl.dot(dQK, k, input_precision="tf32x3")
        tl.store(DQ + rows * DKR + dk[None, :], dq, mask=mrk)
        dk_c = p_e[:, None] * (dk_c + dn_out[None, :])  # now the carry's share of dk
        dli += tl.sum(k * dk_c, 1)
        dk_c += tl.dot(tl.trans(dQK), q, input_precision="tf32x3")
        tl.store(DK_ + rows * DKR + dk[None, :], dk_c, mask=mrk)
    dF = tl.load(DFX + st, mask=valid, other=0.0) - dli
    tl.store(DLI + st, dli, mask=valid)
    tl.store(DLF + st, tl.sum(tl.where(same, dF[:, None], 0.0), 0), mask=valid)


@triton.jit
def _bwd_v_kernel(Q, K, LI, LF, RST, MS, MT, DN, DCS, DV_, T, NC, NH, DKR, DVR,
                  L: tl.constexpr, DK: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_R: tl.constexpr):
    """dv of one chunk and dv tile: ``S^T dN`` plus the carry's ``P_es dC_out^T k_s``."""
    bh = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    j = tl.program_id(2)
    b = bh // NH
    t0 = c * L
    dv = j * BV + tl.arange(0, BV)
    mv = dv < DVR
    sc = bh * (NC + 1) + c
    i, valid, li, same, keep, F = _segments(LI, LF, RST, bh * T, b, t0, T, L, HAS_R)
    st = bh * T + t0 + i
    m_t = tl.load(MT + st, mask=valid, other=0.0)
    D = tl.where(same, F[:, None] - (F - li)[None, :], float("-inf"))
    P = tl.where(same & valid[:, None], tl.exp(D - m_t[:, None]), 0.0)
    last = i == tl.minimum(T - t0, L) - 1
    p_e = tl.sum(tl.where(last[:, None], P, 0.0), 0)
    rows = st[:, None]
    mrv = valid[:, None] & mv[None, :]
    # k q^T and k dC_out over dk blocks of BK (small left operands)
    St = tl.zeros((L, L), dtype=tl.float32)
    carry = tl.zeros((L, BV), dtype=tl.float32)
    for kb in range(DK // BK):
        dk = kb * BK + tl.arange(0, BK)
        mk = dk < DKR
        mrk = valid[:, None] & mk[None, :]
        q = tl.load(Q + rows * DKR + dk[None, :], mask=mrk, other=0.0).to(tl.float32)
        k = tl.load(K + rows * DKR + dk[None, :], mask=mrk, other=0.0).to(tl.float32)
        St += tl.dot(k, tl.trans(q), input_precision="tf32x3")
        dC_out = tl.load(DCS + (sc + 1) * DKR * DVR + dk[:, None] * DVR + dv[None, :],
                         mask=mk[:, None] & mv[None, :], other=0.0)
        carry += tl.dot(k, dC_out, input_precision="tf32x3")
    St = St * tl.trans(P)
    dN = tl.load(DN + rows * DVR + dv[None, :], mask=mrv, other=0.0)
    dvv = tl.dot(St, dN, input_precision="tf32x3") + p_e[:, None] * carry
    tl.store(DV_ + rows * DVR + dv[None, :], dvv, mask=mrv)


def _pad(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _sizes(T: int, dk: int, dv: int, chunk_size: int) -> tuple[int, int, int, int, int]:
    """Chunk length (a power of two in [16, 64]: ``tl.dot`` needs 16), chunk count, padded dk, padded dv, dv tile."""
    L = max(16, min(MAX_CHUNK, triton.next_power_of_2(chunk_size), triton.next_power_of_2(T)))
    DK, DV = _pad(dk), _pad(dv)
    return L, math.ceil(T / L), DK, DV, min(DV, 32)


def _bwd_state_block_v(DV: int) -> int:
    """The dv tile of the reverse carry ``_bwd_state_kernel``. 16 rather than the forward's 32: at dk = 128 it spills
    none with Triton 3.6 (the GPU machine's; 32 spilled 32 / 52 B fp32 / bf16) and none with 3.9 (sm_90)."""
    return min(DV, 16)


def _bwd_block_v(DV: int) -> int:
    """The dv tile of ``_bwd_qk_kernel``'s loops over all of dv."""
    return min(DV, 16)


def _block_k(DK: int, kernel: str) -> int:
    """The dk block of a kernel (its tile or the step of its loops over dk): ``BLOCK_K`` capped at ``DK``."""
    return min(DK, BLOCK_K[kernel])


def _forward(q, k, v, li, lf, rst, C0, n0, m0, chunk_size, save):
    B, NH, T, dk = q.shape
    dv = v.shape[-1]
    L, NC, DK, DV, BV = _sizes(T, dk, dv, chunk_size)
    dev, f32 = q.device, torch.float32
    CS = torch.empty(B, NH, NC + 1, dk, dv, device=dev, dtype=f32)
    NS = torch.empty(B, NH, NC + 1, dk, device=dev, dtype=f32)
    MS = torch.empty(B, NH, NC + 1, device=dev, dtype=f32)
    HAS_R = rst is not None
    rst = rst if HAS_R else MS
    bk = _block_k(DK, "fwd_state")
    launch(_fwd_state_kernel, (B * NH, DV // BV, DK // bk), k, v, li, lf, rst, C0, n0, m0, CS, NS, MS,
           T, NC, NH, dk, dv, L=L, BK=bk, BV=BV, HAS_R=HAS_R, num_warps=NUM_WARPS["fwd_state"])
    h = torch.empty(B, NH, T, dv, device=dev, dtype=f32 if save else q.dtype)
    MT, QN = (torch.empty(B, NH, T, device=dev, dtype=f32) for _ in range(2))
    FL = torch.empty(B, NH, T, device=dev, dtype=torch.int8)
    launch(_fwd_out_kernel, (B * NH, NC, DV // BV), q, k, v, li, lf, rst, CS, NS, MS, h, MT, QN, FL,
           T, NC, NH, dk, dv, L=L, DK=DK, BK=_block_k(DK, "fwd_out"), BV=BV, HAS_R=HAS_R, SAVE=save,
           num_warps=NUM_WARPS["fwd_out"])
    return h, CS, NS, MS, (MT, QN, FL)


def _backward(q, k, v, li, lf, rst, saved, dh, dC_T, dn_T, dm_T, chunk_size):
    """Gradients of every input of :func:`_forward` (fp32), given those of ``h`` and the final state."""
    h32, CS, NS, MS, (MT, QN, FL) = saved
    B, NH, T, dk = q.shape
    dv = v.shape[-1]
    L, NC, DK, DV, BV = _sizes(T, dk, dv, chunk_size)
    dev, f32 = q.device, torch.float32
    # the normaliser max(|q.n|, exp(-m)): d num, d (q.n), and the only gradient m_t gets (where exp(-m) is clipped)
    z = (dh * h32).sum(-1)  # (B, NH, T)
    floor = torch.exp((-MT).clamp(max=MAX_NEG_M))
    took_floor = QN.abs() < floor
    den = torch.where(took_floor, floor, QN.abs())
    dN = (dh / den[..., None]).contiguous()
    dqn = torch.where(took_floor, 0.0, -z * torch.sign(QN) / den)
    clipped = -MT > MAX_NEG_M
    d_stab = torch.where(took_floor & ~clipped, z, 0.0)  # enters d F_t
    dm_h = torch.where(took_floor & clipped, -z, 0.0)  # total d m_t of the read-out

    SBV = _bwd_state_block_v(DV)
    NV = DV // SBV
    DCS = torch.empty(B, NH, NC + 1, dk, dv, device=dev, dtype=f32)
    DNS = torch.empty(B, NH, NC + 1, dk, device=dev, dtype=f32)
    XP = torch.empty(B, NH, NV, NC + 1, device=dev, dtype=f32)
    HAS_R = rst is not None
    rst_arg = rst if HAS_R else MS
    launch(_bwd_state_kernel, (B * NH, NV), q, li, lf, rst_arg, CS, NS, MS, MT, dN, dqn, dC_T, dn_T, DCS, DNS, XP,
           T, NC, NH, NV, dk, dv, L=L, DK=DK, BV=SBV, HAS_R=HAS_R, num_warps=NUM_WARPS["bwd_state"])
    X = XP.sum(2)  # <dC, C> + <dn, n> at every chunk boundary: (B, NH, NC + 1)

    # the dm carry: dm_in(c) = X_c + Y_c with Y_c = sum over the chunk of sel_t dm_h_t + sel_e Y_{c+1} (sel: the
    # stabiliser took the live initial-state path), Y_NC = dm_T - X_NC; a segmented reverse sum, no loop
    ends = torch.clamp(torch.arange(1, NC + 1, device=dev) * L, max=T) - 1  # each chunk's last real step
    sel = (FL == 3).to(f32)
    pad = NC * L - T
    hsum = torch.nn.functional.pad(sel * dm_h, (0, pad)).view(B, NH, NC, L).sum(-1)
    w = torch.cat([hsum, (dm_T - X[..., NC])[..., None]], -1)  # (B, NH, NC + 1)
    breaks = torch.cat([torch.zeros_like(hsum[..., :1]), (1.0 - sel[..., ends]).cumsum(-1)], -1)
    idx = torch.arange(NC + 1, device=dev)
    reach = (idx[None, :] >= idx[:, None]) & (breaks[..., None, :] == breaks[..., :, None])
    Y = (reach.to(f32) * w[..., None, :]).sum(-1)  # (B, NH, NC + 1)
    dm0 = X[..., 0] + Y[..., 0]
    dm_t = dm_h.clone()
    dm_t[..., ends] += Y[..., 1:]
    dfx = d_stab
    dfx[..., ends] += X[..., 1:] + Y[..., 1:]

    dq, dk_ = torch.empty(B, NH, T, dk, device=dev, dtype=f32), torch.empty(B, NH, T, dk, device=dev, dtype=f32)
    dv_ = torch.empty(B, NH, T, dv, device=dev, dtype=f32)
    dli, dlf = torch.empty(B, NH, T, device=dev, dtype=f32), torch.empty(B, NH, T, device=dev, dtype=f32)
    bv = _bwd_block_v(DV)
    launch(_bwd_qk_kernel, (B * NH, NC), q, k, v, li, lf, rst_arg, CS, NS, MS, MT, FL, dN, dqn, DCS, DNS,
           dfx, dm_t, dq, dk_, dli, dlf, T, NC, NH, dk, dv,
           L=L, DK=DK, BK=_block_k(DK, "bwd_qk"), BV=bv, NVT=DV // bv, HAS_R=HAS_R, num_warps=NUM_WARPS["bwd_qk"])
    launch(_bwd_v_kernel, (B * NH, NC, DV // BV), q, k, li, lf, rst_arg, MS, MT, dN, DCS, dv_, T, NC, NH, dk, dv,
           L=L, DK=DK, BK=_block_k(DK, "bwd_v"), BV=BV, HAS_R=HAS_R, num_warps=NUM_WARPS["bwd_v"])
    return dq, dk_, dv_, dli, dlf, DCS[:, :, 0], DNS[:, :, 0], dm0


class _MLSTMTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, li, lf, C0, n0, m0, rst, chunk_size):
        h32, CS, NS, MS, aux = _forward(q, k, v, li, lf, rst, C0, n0, m0, chunk_size, save=True)
        ctx.save_for_backward(q, k, v, li, lf, rst, h32, CS, NS, MS, *aux)
        ctx.chunk_size = chunk_size
        ctx.dtypes = [t.dtype for t in (q, k, v, li, lf, C0, n0, m0)]
        if dry_run_active():  # a precompile pass: ask for the backward kernels too
            _backward(q, k, v, li, lf, rst, (h32, CS, NS, MS, aux), torch.zeros_like(h32),
                      CS[:, :, -1].clone(), NS[:, :, -1].clone(), MS[:, :, -1].clone(), chunk_size)
        # the final state as copies, not views of the saved states (an in-place edit of one would break backward)
        sdt = C0.dtype
        return (h32.to(q.dtype), *(s[:, :, -1].to(sdt, copy=True) for s in (CS, NS, MS)))

    @staticmethod
    def backward(ctx, dh, dC, dn, dm):
        q, k, v, li, lf, rst, h32, CS, NS, MS, *aux = ctx.saved_tensors
        B, NH, T, dk = q.shape
        dv = v.shape[-1]
        dev, f32 = q.device, torch.float32

        def grad(g, *shape):
            return torch.zeros(*shape, device=dev, dtype=f32) if g is None else g.to(f32).contiguous()

        grads = _backward(q, k, v, li, lf, rst, (h32, CS, NS, MS, tuple(aux)), grad(dh, B, NH, T, dv),
                          grad(dC, B, NH, dk, dv), grad(dn, B, NH, dk), grad(dm, B, NH), ctx.chunk_size)
        return (*(g.to(dt) for g, dt in zip(grads, ctx.dtypes, strict=True)), None, None)


def mlstm_triton(
    q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor,
    C0: Tensor, n0: Tensor, m0: Tensor, resets: Tensor | None = None, chunk_size: int = 64,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Same contract as :func:`mlstm_chunkwise` (``h`` in ``q``'s dtype, the state in ``C0``'s); chunks of
    ``chunk_size`` rounded to a power of two in [16, 64]; q/k head size <= 128, v head size <= 256."""
    _check_shapes(q, k, v, log_i, log_f, C0, n0, m0, resets, chunk_size)
    B, NH, T, dk = q.shape
    dv = v.shape[-1]
    if T == 0:
        raise ValueError("mlstm_triton: expected at least one time step, got T=0")
    if dk > MAX_DK or dv > MAX_DV:
        raise ValueError(f"mlstm_triton: head sizes must be dk <= {MAX_DK}, dv <= {MAX_DV}, got dk={dk}, dv={dv}")
    args = [t.contiguous() for t in (q, k, v, log_i, log_f, C0, n0, m0)]
    rst = resets.to(torch.uint8).contiguous() if resets is not None else None
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        h, C, n, m = _MLSTMTriton.apply(*args, rst, chunk_size)
        return h, (C, n, m)
    q, k, v, li, lf, C0, n0, m0 = args
    h, CS, NS, MS, _ = _forward(q, k, v, li, lf, rst, C0, n0, m0, chunk_size, save=False)
    sdt = C0.dtype
    return h, (CS[:, :, -1].to(sdt), NS[:, :, -1].to(sdt), MS[:, :, -1].to(sdt))
