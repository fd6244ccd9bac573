"""Triton sLSTM sequence recurrence: kernels -> launchers -> autograd Function -> public fn.

One program per (batch block, head) keeps that head's four recurrent blocks ``R[g, head]`` (``dh x dh``) in
registers and loops over time inside the kernel; the forward saves the pre-activations and the ``(c, n, m)``
sequence, the backward walks time in reverse, recomputes the gates from them and emits the pre-activation
gradients (= the gradient of ``wx``); ``dR`` is then one einsum over all steps. Same contract and stabiliser as
:func:`slstm_naive`; everything accumulates in fp32 (dots in IEEE fp32, no TF32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...ops.precompile import dry_run_active, launch

_BB = 16  # batch rows per program: tl.dot needs at least 16
# products on tensor cores in three TF32 passes: fp32-level accuracy, and far faster to compile and run than "ieee"
MAX_HEAD_DIM = 64  # four dh x dh fp32 blocks stay in registers up to here


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _log_forget(f, EXP_FORGET: tl.constexpr):
    """(log f, d log f / d f~) for the sigmoid or exponential forget gate."""
    if EXP_FORGET:
        return f, tl.full(f.shape, 1.0, tl.float32)
    logsig = tl.minimum(f, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(f)))
    return logsig, tl.sigmoid(-f)


@triton.jit
def _gates(pi, pf, pz, po, n, m, EXP_FORGET: tl.constexpr):
    """The stabilised gates of one step, as in ``slstm_pointwise``."""
    log_f, dlogf = _log_forget(pf, EXP_FORGET)
    empty = n == 0.0
    prev = tl.where(empty, float("-inf"), log_f + m)
    m_new = tl.maximum(prev, pi)
    ig = tl.exp(pi - m_new)
    fg = tl.exp(prev - m_new)
    return ig, fg, _tanh(pz), tl.sigmoid(po), prev, m_new, dlogf, empty


@triton.jit
def _load_block(R, gate, head, d, dm, NH: tl.constexpr, DH: tl.constexpr, TRANSPOSE: tl.constexpr):
    """``R[gate, head]`` as a ``[BD, BD]`` tile (``[k, e]``, or ``[e, k]`` when transposed), zero padded."""
    base = (gate * NH + head) * DH * DH
    if TRANSPOSE:
        offs = d[None, :] * DH + d[:, None]
    else:
        offs = d[:, None] * DH + d[None, :]
    return tl.load(R + base + offs, mask=dm[:, None] & dm[None, :], other=0.0).to(tl.float32)


@triton.jit
def _program_tile(B, H, DH: tl.constexpr, BB: tl.constexpr, BD: tl.constexpr):
    """This program's (batch block, head): row and column indices, masks, offsets into ``[B, H]`` states."""
    pb, head = tl.program_id(0), tl.program_id(1)
    rows = pb * BB + tl.arange(0, BB)
    d = tl.arange(0, BD)
    rm, dm = rows < B, d < DH
    m2 = rm[:, None] & dm[None, :]
    cols = head * DH + d
    sidx = rows[:, None] * H + cols[None, :]
    return head, rows, d, rm, dm, m2, cols, sidx


@triton.jit
def _load_four(a, b, c, e, sidx, m2):
    """Four ``[B, H]`` tiles (the state or its gradient) in fp32."""
    return (tl.load(a + sidx, mask=m2, other=0.0).to(tl.float32), tl.load(b + sidx, mask=m2, other=0.0).to(tl.float32),
            tl.load(c + sidx, mask=m2, other=0.0).to(tl.float32), tl.load(e + sidx, mask=m2, other=0.0).to(tl.float32))


@triton.jit
def _load_gate_blocks(R, head, d, dm, NH: tl.constexpr, DH: tl.constexpr, TRANSPOSE: tl.constexpr):
    """The head's recurrent blocks of the four gates (i, f, z, o), transposed for the backward."""
    return (_load_block(R, 0, head, d, dm, NH, DH, TRANSPOSE), _load_block(R, 1, head, d, dm, NH, DH, TRANSPOSE),
            _load_block(R, 2, head, d, dm, NH, DH, TRANSPOSE), _load_block(R, 3, head, d, dm, NH, DH, TRANSPOSE))


@triton.jit
def _fwd_kernel(wx, R, h0, c0, n0, m0, rst, hs, hT, cT, nT, mT, pre_s, cs, ns, ms, B, T, H,
                NH: tl.constexpr, DH: tl.constexpr, HAS_RESETS: tl.constexpr, EXP_FORGET: tl.constexpr,
                SAVE: tl.constexpr, BB: tl.constexpr, BD: tl.constexpr):
    head, rows, d, rm, dm, m2, cols, sidx = _program_tile(B, H, DH, BB, BD)
    h, c, n, m = _load_four(h0, c0, n0, m0, sidx, m2)
    Ri, Rf, Rz, Ro = _load_gate_blocks(R, head, d, dm, NH, DH, False)
    if SAVE:  # slot 0 of the saved (c, n, m) sequence is the incoming state
        sq = (rows[:, None] * (T + 1)) * H + cols[None, :]
        tl.store(cs + sq, c, mask=m2)
        tl.store(ns + sq, n, mask=m2)
        tl.store(ms + sq, m, mask=m2)
    # the input projections of step t + 1 are loaded during step t: they do not depend on h, so their memory
    # latency hides behind the recurrence instead of stalling every step
    xo = (rows[:, None] * T * 4) * H + cols[None, :]
    xi = tl.load(wx + xo, mask=m2, other=0.0).to(tl.float32)  # T >= 1: the launcher never runs empty sequences
    xf = tl.load(wx + xo + H, mask=m2, other=0.0).to(tl.float32)
    xz = tl.load(wx + xo + 2 * H, mask=m2, other=0.0).to(tl.float32)
    xq = tl.load(wx + xo + 3 * H, mask=m2, other=0.0).to(tl.float32)
    for t in range(T):
        if HAS_RESETS:
            r = (tl.load(rst + rows * T + t, mask=rm, other=0) != 0)[:, None]
            h = tl.where(r, 0.0, h)
            c = tl.where(r, 0.0, c)
            n = tl.where(r, 0.0, n)
            m = tl.where(r, 0.0, m)
        xo = ((rows[:, None] * T + t) * 4) * H + cols[None, :]
        mn = m2 & ((rows * 0 + t + 1) < T)[:, None]  # a block mask, not a scalar one (portable across versions)
        xi_n = tl.load(wx + xo + 4 * H, mask=mn, other=0.0).to(tl.float32)
        xf_n = tl.load(wx + xo + 5 * H, mask=mn, other=0.0).to(tl.float32)
        xz_n = tl.load(wx + xo + 6 * H, mask=mn, other=0.0).to(tl.float32)
        xq_n = tl.load(wx + xo + 7 * H, mask=mn, other=0.0).to(tl.float32)
        pi = xi + tl.dot(h, Ri, input_precision="tf32x3")
        pf = xf + tl.dot(h, Rf, input_precision="tf32x3")
        pz = xz + tl.dot(h, Rz, input_precision="tf32x3")
        po = xq + tl.dot(h, Ro, input_precision="tf32x3")
        xi, xf, xz, xq = xi_n, xf_n, xz_n, xq_n
        ig, fg, zt, og, prev, m, dlogf, empty = _gates(pi, pf, pz, po, n, m, EXP_FORGET)
        c = fg * c + ig * zt
        n = fg * n + ig
        h = og * c / n
        yo = (rows[:, None] * T + t) * H + cols[None, :]
        tl.store(hs + yo, h.to(hs.dtype.element_ty), mask=m2)
        if SAVE:
            tl.store(pre_s + xo, pi, mask=m2)
            tl.store(pre_s + xo + H, pf, mask=m2)
            tl.store(pre_s + xo + 2 * H, pz, mask=m2)
            tl.store(pre_s + xo + 3 * H, po, mask=m2)
            sq = (rows[:, None] * (T + 1) + t + 1) * H + cols[None, :]
            tl.store(cs + sq, c, mask=m2)
            tl.store(ns + sq, n, mask=m2)
            tl.store(ms + sq, m, mask=m2)
    tl.store(hT + sidx, h.to(hT.dtype.element_ty), mask=m2)
    tl.store(cT + sidx, c.to(cT.dtype.element_ty), mask=m2)
    tl.store(nT + sidx, n.to(nT.dtype.element_ty), mask=m2)
    tl.store(mT + sidx, m.to(mT.dtype.element_ty), mask=m2)


@triton.jit
def _load_saved(cs, ns, ms, pre_s, dhs, rows, cols, t, T, H, mask):
    """What backward step ``t`` reads: saved ``c, n, m`` before the step, the 4 pre-activations, ``dL/dh_t``."""
    sq = (rows[:, None] * (T + 1) + t) * H + cols[None, :]
    xo = ((rows[:, None] * T + t) * 4) * H + cols[None, :]
    c = tl.load(cs + sq, mask=mask, other=0.0)
    n = tl.load(ns + sq, mask=mask, other=0.0)
    m = tl.load(ms + sq, mask=mask, other=0.0)
    pi = tl.load(pre_s + xo, mask=mask, other=0.0)
    pf = tl.load(pre_s + xo + H, mask=mask, other=0.0)
    pz = tl.load(pre_s + xo + 2 * H, mask=mask, other=0.0)
    po = tl.load(pre_s + xo + 3 * H, mask=mask, other=0.0)
    dy = tl.load(dhs + (rows[:, None] * T + t) * H + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return c, n, m, pi, pf, pz, po, dy


@triton.jit
def _bwd_kernel(R, rst, pre_s, cs, ns, ms, dhs, dhT, dcT, dnT, dmT, dpre, dh0, dc0, dn0, dm0, B, T, H,
                NH: tl.constexpr, DH: tl.constexpr, HAS_RESETS: tl.constexpr, EXP_FORGET: tl.constexpr,
                BB: tl.constexpr, BD: tl.constexpr):
    head, rows, d, rm, dm, m2, cols, sidx = _program_tile(B, H, DH, BB, BD)
    dh, dc, dn, dm_ = _load_four(dhT, dcT, dnT, dmT, sidx, m2)
    RiT, RfT, RzT, RoT = _load_gate_blocks(R, head, d, dm, NH, DH, True)
    # everything step t reads except the carried gradients is loaded during step t + 1 (latency off the chain)
    c_l, n_l, m_l, pi_l, pf_l, pz_l, po_l, dy_l = _load_saved(cs, ns, ms, pre_s, dhs, rows, cols, T - 1, T, H,
                                                              m2)
    for tt in range(T):
        t = T - 1 - tt
        c, n, m, pi, pf, pz, po, dy = c_l, n_l, m_l, pi_l, pf_l, pz_l, po_l, dy_l
        c_l, n_l, m_l, pi_l, pf_l, pz_l, po_l, dy_l = _load_saved(cs, ns, ms, pre_s, dhs, rows, cols, t - 1, T, H,
                                                                  m2 & ((rows * 0 + t) >= 1)[:, None])
        if HAS_RESETS:
            r = (tl.load(rst + rows * T + t, mask=rm, other=0) != 0)[:, None]
            c = tl.where(r, 0.0, c)
            n = tl.where(r, 0.0, n)
            m = tl.where(r, 0.0, m)
        xo = ((rows[:, None] * T + t) * 4) * H + cols[None, :]
        ig, fg, zt, og, prev, m_new, dlogf, empty = _gates(pi, pf, pz, po, n, m, EXP_FORGET)
        c_new = fg * c + ig * zt
        n_new = fg * n + ig
        dh += dy
        d_o = dh * (c_new / n_new) * og * (1.0 - og)
        dcn = dc + dh * og / n_new
        dnn = dn - dh * og * c_new / (n_new * n_new)
        dfg = dcn * c + dnn * n
        dig = dcn * zt + dnn
        d_z = dcn * ig * (1.0 - zt * zt)
        dmn = dm_ - dig * ig - dfg * fg
        took_prev = prev >= pi  # the stabiliser's max picked log f + m (never when the memory is empty)
        dprev = tl.where(empty, 0.0, dfg * fg + tl.where(took_prev, dmn, 0.0))
        d_i = dig * ig + tl.where(took_prev, 0.0, dmn)
        d_f = dprev * dlogf
        tl.store(dpre + xo, d_i, mask=m2)
        tl.store(dpre + xo + H, d_f, mask=m2)
        tl.store(dpre + xo + 2 * H, d_z, mask=m2)
        tl.store(dpre + xo + 3 * H, d_o, mask=m2)
        dh = (tl.dot(d_i, RiT, input_precision="tf32x3") + tl.dot(d_f, RfT, input_precision="tf32x3")
              + tl.dot(d_z, RzT, input_precision="tf32x3") + tl.dot(d_o, RoT, input_precision="tf32x3"))
        dc = dcn * fg
        dn = dnn * fg
        dm_ = dprev
        if HAS_RESETS:
            dh = tl.where(r, 0.0, dh)
            dc = tl.where(r, 0.0, dc)
            dn = tl.where(r, 0.0, dn)
            dm_ = tl.where(r, 0.0, dm_)
    tl.store(dh0 + sidx, dh, mask=m2)
    tl.store(dc0 + sidx, dc, mask=m2)
    tl.store(dn0 + sidx, dn, mask=m2)
    tl.store(dm0 + sidx, dm_, mask=m2)


def _block_dim(dh: int) -> int:
    return max(16, triton.next_power_of_2(dh))


def _num_warps(bd: int) -> int:
    return 8 if bd >= 64 else 4


def _launch_fwd(wx: Tensor, R: Tensor, states: tuple[Tensor, ...], rst: Tensor | None, exp_forget: bool,
                save: bool) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...] | None]:
    B, T, _, H = wx.shape
    NH, DH = R.shape[1], R.shape[2]
    dev, f32 = wx.device, torch.float32
    hs = torch.empty(B, T, H, device=dev, dtype=wx.dtype)
    finals = tuple(torch.empty(B, H, device=dev, dtype=wx.dtype) for _ in range(4))
    if save:
        saved = (torch.empty(B, T, 4, H, device=dev, dtype=f32),) + tuple(
            torch.empty(B, T + 1, H, device=dev, dtype=f32) for _ in range(3))
    else:
        saved = None
    dummy = hs
    bd = _block_dim(DH)
    launch(_fwd_kernel, (triton.cdiv(B, _BB), NH),
           wx, R, *states, rst if rst is not None else dummy, hs, *finals, *(saved or (dummy,) * 4), B, T, H,
           NH=NH, DH=DH, HAS_RESETS=rst is not None, EXP_FORGET=exp_forget, SAVE=save, BB=_BB, BD=bd,
           num_warps=_num_warps(bd))
    return hs, finals, saved


def _launch_bwd(R: Tensor, rst: Tensor | None, saved: tuple[Tensor, ...], dhs: Tensor, finals: list[Tensor],
                exp_forget: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
    B, T, H = dhs.shape
    NH, DH = R.shape[1], R.shape[2]
    dpre = torch.empty(B, T, 4, H, device=dhs.device, dtype=torch.float32)
    d0 = tuple(torch.zeros(B, H, device=dhs.device, dtype=torch.float32) for _ in range(4))
    bd = _block_dim(DH)
    launch(_bwd_kernel, (triton.cdiv(B, _BB), NH),
           R, rst if rst is not None else dpre, *saved, dhs, *finals, dpre, *d0, B, T, H,
           NH=NH, DH=DH, HAS_RESETS=rst is not None, EXP_FORGET=exp_forget, BB=_BB, BD=bd,
           num_warps=_num_warps(bd))
    return dpre, d0


class _SLSTMTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, wx: Tensor, R: Tensor, h0: Tensor, c0: Tensor, n0: Tensor, m0: Tensor, rst: Tensor | None,
                exp_forget: bool):
        hs, finals, saved = _launch_fwd(wx, R, (h0, c0, n0, m0), rst, exp_forget, save=True)
        ctx.save_for_backward(R, h0, hs, rst, *saved)
        ctx.exp_forget = exp_forget
        ctx.dtypes = (wx.dtype, R.dtype, h0.dtype, c0.dtype, n0.dtype, m0.dtype)
        if dry_run_active():  # a precompile pass: ask for the backward kernel too (gradients as autograd gives them)
            _launch_bwd(R, rst, saved, torch.empty_like(hs), [torch.empty_like(f) for f in finals], exp_forget)
        return (hs, *finals)

    @staticmethod
    def backward(ctx, dhs, dhT, dcT, dnT, dmT):
        R, h0, hs, rst, *saved = ctx.saved_tensors
        B, T, H = hs.shape
        NH, DH = R.shape[1], R.shape[2]
        dev = hs.device
        dhs = torch.zeros(B, T, H, device=dev, dtype=torch.float32) if dhs is None else dhs.contiguous()
        finals = [torch.zeros(B, H, device=dev, dtype=torch.float32) if g is None else g.contiguous()
                  for g in (dhT, dcT, dnT, dmT)]
        dpre, d0 = _launch_bwd(R, rst, tuple(saved), dhs, finals, ctx.exp_forget)
        # dR[g, head, k, e] = sum over (b, t) of h_{t-1}[head, k] * dpre_t[g, head, e] (h_{t-1} after the reset)
        hprev = torch.cat([h0.float()[:, None], hs[:, :-1].float()], 1)
        if rst is not None:
            hprev = torch.where(rst[..., None] != 0, torch.zeros_like(hprev), hprev)
        dR = torch.einsum("btnk,btgne->gnke", hprev.view(B, T, NH, DH), dpre.view(B, T, 4, NH, DH))
        dt = ctx.dtypes
        return (dpre.to(dt[0]), dR.to(dt[1]), *(g.to(t) for g, t in zip(d0, dt[2:], strict=True)), None, None)


def slstm_triton(
    wx: Tensor, R: Tensor, h0: Tensor, c0: Tensor, n0: Tensor, m0: Tensor,
    resets: Tensor | None = None, forget_gate: str = "sigmoid",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Same as :func:`slstm_naive` on CUDA (head size <= 64), flat: ``(h_seq [B, T, H], h, c, n, m)``."""
    B, T, four, H = wx.shape
    if four != 4 or R.dim() != 4 or R.shape[0] != 4 or R.shape[1] * R.shape[2] != H or R.shape[2] != R.shape[3]:
        raise ValueError(f"expected wx [B, T, 4, H] and R [4, NH, dh, dh] with NH * dh = H, got "
                         f"wx {tuple(wx.shape)}, R {tuple(R.shape)}")
    if R.shape[2] > MAX_HEAD_DIM:
        raise ValueError(f"the triton sLSTM supports head sizes <= {MAX_HEAD_DIM}, got {R.shape[2]}")
    if T == 0:
        raise ValueError("expected at least one time step, got T=0")
    wx, R = wx.contiguous(), R.contiguous()
    states = tuple(s.contiguous() for s in (h0, c0, n0, m0))
    rst = resets.to(torch.uint8).contiguous() if resets is not None else None
    exp_forget = forget_gate == "exp"
    if torch.is_grad_enabled() and any(t.requires_grad for t in (wx, R, *states)):
        return _SLSTMTriton.apply(wx, R, *states, rst, exp_forget)
    hs, finals, _ = _launch_fwd(wx, R, states, rst, exp_forget, save=False)
    return (hs, *finals)
