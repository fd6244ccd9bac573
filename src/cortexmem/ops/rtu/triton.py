"""Triton RTU diagonal complex scan ``c_t = lam c_{t-1} + u_t`` with resets: kernels -> launchers -> Function.

Complex tensors travel as their real views (``[..., 2]``: real, imaginary). One program per (batch row, channel
block) loops over time. The backward is the adjoint scan ``G_t = g_t + conj(a_{t+1}) G_{t+1}`` with ``a_{t+1} =
0`` when ``resets[t+1]`` (a reset before step ``t+1`` cuts the dependence of ``c_{t+1}`` on ``c_t``), and
``dlam = sum_t [not resets[t]] G_t conj(c_{t-1})``. Gradients follow PyTorch's complex convention
(``dL/dRe + i dL/dIm``). Accumulates in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...ops.precompile import dry_run_active, launch

_BH = 64


@triton.jit
def _fwd_kernel(u, lam, c0, rst, c, T, H, HAS_RESETS: tl.constexpr, BH: tl.constexpr):
    b, ph = tl.program_id(0), tl.program_id(1)
    h = ph * BH + tl.arange(0, BH)
    hm = h < H
    lr = tl.load(lam + 2 * h, mask=hm, other=0.0).to(tl.float32)
    li = tl.load(lam + 2 * h + 1, mask=hm, other=0.0).to(tl.float32)
    cr = tl.load(c0 + 2 * (b * H + h), mask=hm, other=0.0).to(tl.float32)
    ci = tl.load(c0 + 2 * (b * H + h) + 1, mask=hm, other=0.0).to(tl.float32)
    for t in range(T):
        if HAS_RESETS:
            keep = tl.load(rst + b * T + t) == 0
            cr = tl.where(keep, cr, 0.0)
            ci = tl.where(keep, ci, 0.0)
        o = 2 * ((b * T + t) * H + h)
        ur = tl.load(u + o, mask=hm, other=0.0).to(tl.float32)
        ui = tl.load(u + o + 1, mask=hm, other=0.0).to(tl.float32)
        cr, ci = lr * cr - li * ci + ur, lr * ci + li * cr + ui
        tl.store(c + o, cr.to(c.dtype.element_ty), mask=hm)
        tl.store(c + o + 1, ci.to(c.dtype.element_ty), mask=hm)


@triton.jit
def _bwd_kernel(dc, c, lam, c0, rst, du, dc0, dlam_part, T, H, HAS_RESETS: tl.constexpr, BH: tl.constexpr):
    b, ph = tl.program_id(0), tl.program_id(1)
    h = ph * BH + tl.arange(0, BH)
    hm = h < H
    lr = tl.load(lam + 2 * h, mask=hm, other=0.0).to(tl.float32)
    li = tl.load(lam + 2 * h + 1, mask=hm, other=0.0).to(tl.float32)
    ar = tl.zeros((BH,), dtype=tl.float32)  # conj(a_{t+1}) G_{t+1}: the adjoint carried from step t+1
    ai = tl.zeros((BH,), dtype=tl.float32)
    glr = tl.zeros((BH,), dtype=tl.float32)
    gli = tl.zeros((BH,), dtype=tl.float32)
    for tt in range(T):
        t = T - 1 - tt
        o = 2 * ((b * T + t) * H + h)
        gr = tl.load(dc + o, mask=hm, other=0.0).to(tl.float32) + ar
        gi = tl.load(dc + o + 1, mask=hm, other=0.0).to(tl.float32) + ai
        tl.store(du + o, gr, mask=hm)
        tl.store(du + o + 1, gi, mask=hm)
        po = 2 * ((b * T + t - 1) * H + h)
        first = t == 0
        pr = tl.load(c + po, mask=hm & (t > 0), other=0.0).to(tl.float32)
        pi = tl.load(c + po + 1, mask=hm & (t > 0), other=0.0).to(tl.float32)
        pr += tl.load(c0 + 2 * (b * H + h), mask=hm & first, other=0.0).to(tl.float32)
        pi += tl.load(c0 + 2 * (b * H + h) + 1, mask=hm & first, other=0.0).to(tl.float32)
        # G_t conj(c_{t-1}) and conj(lam) G_t
        glt_r, glt_i = gr * pr + gi * pi, gi * pr - gr * pi
        ar, ai = lr * gr + li * gi, lr * gi - li * gr
        if HAS_RESETS:
            keep = tl.load(rst + b * T + t) == 0
            glt_r = tl.where(keep, glt_r, 0.0)
            glt_i = tl.where(keep, glt_i, 0.0)
            ar = tl.where(keep, ar, 0.0)
            ai = tl.where(keep, ai, 0.0)
        glr += glt_r
        gli += glt_i
    tl.store(dc0 + 2 * (b * H + h), ar, mask=hm)
    tl.store(dc0 + 2 * (b * H + h) + 1, ai, mask=hm)
    tl.store(dlam_part + 2 * (b * H + h), glr, mask=hm)
    tl.store(dlam_part + 2 * (b * H + h) + 1, gli, mask=hm)


def _launch_fwd(u: Tensor, lam: Tensor, c0: Tensor, rst: Tensor | None) -> Tensor:
    B, T, H, _ = u.shape
    c = torch.empty_like(u)
    launch(_fwd_kernel, (B, triton.cdiv(H, _BH)), u, lam, c0, rst if rst is not None else u, c, T, H,
           HAS_RESETS=rst is not None, BH=_BH)
    return c


def _launch_bwd(dc: Tensor, c: Tensor, lam: Tensor, c0: Tensor, rst: Tensor | None) -> tuple[Tensor, ...]:
    B, T, H, _ = c.shape
    du = torch.empty(B, T, H, 2, device=c.device, dtype=torch.float32)
    dc0 = torch.empty(B, H, 2, device=c.device, dtype=torch.float32)
    part = torch.empty(B, H, 2, device=c.device, dtype=torch.float32)
    launch(_bwd_kernel, (B, triton.cdiv(H, _BH)), dc, c, lam, c0, rst if rst is not None else c, du, dc0, part, T,
           H, HAS_RESETS=rst is not None, BH=_BH)
    return du, dc0, part


class _RTUScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, lam: Tensor, c0: Tensor, rst: Tensor | None) -> Tensor:
        c = _launch_fwd(u, lam, c0, rst)
        ctx.save_for_backward(c, lam, c0, rst)
        if dry_run_active():  # a precompile pass: ask for the backward kernel too
            _launch_bwd(torch.empty_like(c), c, lam, c0, rst)
        return c

    @staticmethod
    def backward(ctx, dc: Tensor):
        c, lam, c0, rst = ctx.saved_tensors
        du, dc0, part = _launch_bwd(dc.contiguous(), c, lam, c0, rst)
        return du.to(c.dtype), part.sum(0).to(lam.dtype), dc0.to(c0.dtype), None


def rtu_scan_triton(u: Tensor, lam: Tensor, c0: Tensor, resets: Tensor | None = None) -> Tensor:
    """Real views: ``u [B, T, H, 2]``, ``lam [H, 2]``, ``c0 [B, H, 2]``, ``resets [B, T]`` -> ``c [B, T, H, 2]``."""
    if u.dim() != 4 or u.shape[-1] != 2 or lam.shape != (u.shape[2], 2) or c0.shape != (u.shape[0], u.shape[2], 2):
        raise ValueError(f"expected real views u [B, T, H, 2], lam [H, 2], c0 [B, H, 2], got u {tuple(u.shape)}, "
                         f"lam {tuple(lam.shape)}, c0 {tuple(c0.shape)}")
    rst = resets.to(torch.uint8).contiguous() if resets is not None else None
    return _RTUScanTriton.apply(u.contiguous(), lam.contiguous(), c0.contiguous(), rst)


_TRACE_BH, _TRACE_BZ = 8, 128


@triton.jit
def _trace_w_kernel(ew0, drive, lam_re, lam_im, keep, out, H, Z, HAS_KEEP: tl.constexpr, BH: tl.constexpr,
                    BZ: tl.constexpr):
    # e_w <- lam e_w + drive for one (row, H-block, Z-block) tile, in lam's precision (float64 for the step)
    b, ph, pz = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    h = ph * BH + tl.arange(0, BH)
    z = pz * BZ + tl.arange(0, BZ)
    hm, zm = h < H, z < Z
    m = hm[:, None] & zm[None, :]
    lr = tl.load(lam_re + h, mask=hm, other=0.0)
    li = tl.load(lam_im + h, mask=hm, other=0.0)
    if HAS_KEEP:
        k = tl.load(keep + b + 0 * h).to(lr.dtype)
        lr, li = lr * k, li * k
    d = tl.load(drive + b * Z + z, mask=zm, other=0.0).to(lr.dtype)
    off = (b * 2 * H + h[:, None]) * Z + z[None, :]
    re = tl.load(ew0 + off, mask=m, other=0.0).to(lr.dtype)
    im = tl.load(ew0 + off + H * Z, mask=m, other=0.0).to(lr.dtype)
    new_re = d[None, :] + lr[:, None] * re - li[:, None] * im
    new_im = lr[:, None] * im + li[:, None] * re
    tl.store(out + off, new_re.to(out.dtype.element_ty), mask=m)
    tl.store(out + off + H * Z, new_im.to(out.dtype.element_ty), mask=m)


def trace_w_step_triton(ew0: Tensor, drive: Tensor, lam_re: Tensor, lam_im: Tensor, keep: Tensor | None) -> Tensor:
    """Same as :func:`~cortexmem.ops.rtu.recurrent.trace_w_step_torch` (result in ``ew0``'s dtype), no autograd."""
    B, two, H, Z = ew0.shape
    if two != 2 or drive.shape != (B, Z) or lam_re.shape != (H,) or lam_im.shape != (H,):
        raise ValueError(f"expected ew0 [B, 2, H, Z], drive [B, Z], lam parts [H], got ew0 {tuple(ew0.shape)}, "
                         f"drive {tuple(drive.shape)}, lam {tuple(lam_re.shape)} / {tuple(lam_im.shape)}")
    ew0 = ew0.contiguous()
    out = torch.empty_like(ew0)
    grid = (B, triton.cdiv(H, _TRACE_BH), triton.cdiv(Z, _TRACE_BZ))
    launch(_trace_w_kernel, grid, ew0, drive.contiguous(), lam_re.contiguous(), lam_im.contiguous(),
           keep.contiguous() if keep is not None else ew0, out, H, Z, HAS_KEEP=keep is not None, BH=_TRACE_BH,
           BZ=_TRACE_BZ)
    return out
