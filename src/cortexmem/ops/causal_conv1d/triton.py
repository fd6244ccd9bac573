"""Triton depthwise causal conv1d with a carried buffer and reset masks: kernels -> launchers -> autograd Function.

Same contract as :func:`causal_conv1d_naive` (depthwise weights ``[H, K]`` only). Accumulates in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...ops.precompile import dry_run_active, launch
from .chunk import final_buffer, reset_counts


@triton.jit
def _fwd_kernel(ext, w, bias, count, y, T, H, L, K: tl.constexpr, HAS_BIAS: tl.constexpr,
                HAS_RESETS: tl.constexpr, BT: tl.constexpr, BH: tl.constexpr):
    b, pt, ph = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = pt * BT + tl.arange(0, BT)
    h = ph * BH + tl.arange(0, BH)
    tm, hm = t < T, h < H
    m2 = tm[:, None] & hm[None, :]
    acc = tl.zeros((BT, BH), dtype=tl.float32)
    if HAS_RESETS:
        ct = tl.load(count + b * L + (K - 1) + t, mask=tm, other=0)
    for k in tl.static_range(K):
        s = t + k
        xv = tl.load(ext + (b * L + s[:, None]) * H + h[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_RESETS:
            cs = tl.load(count + b * L + s, mask=tm, other=0)
            xv = tl.where((cs == ct)[:, None], xv, 0.0)
        wk = tl.load(w + h * K + k, mask=hm, other=0.0).to(tl.float32)
        acc += xv * wk[None, :]
    if HAS_BIAS:
        acc += tl.load(bias + h, mask=hm, other=0.0).to(tl.float32)[None, :]
    tl.store(y + (b * T + t[:, None]) * H + h[None, :], acc.to(y.dtype.element_ty), mask=m2)


@triton.jit
def _bwd_input_kernel(dy, w, count, dext, T, H, L, K: tl.constexpr, HAS_RESETS: tl.constexpr,
                      BS: tl.constexpr, BH: tl.constexpr):
    b, ps, ph = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    s = ps * BS + tl.arange(0, BS)
    h = ph * BH + tl.arange(0, BH)
    sm, hm = s < L, h < H
    acc = tl.zeros((BS, BH), dtype=tl.float32)
    if HAS_RESETS:
        cs = tl.load(count + b * L + s, mask=sm, other=0)
    for k in tl.static_range(K):
        t = s - k
        tm = sm & (t >= 0) & (t < T)
        g = tl.load(dy + (b * T + t[:, None]) * H + h[None, :], mask=tm[:, None] & hm[None, :], other=0.0)
        g = g.to(tl.float32)
        if HAS_RESETS:
            ct = tl.load(count + b * L + (K - 1) + t, mask=tm, other=0)
            g = tl.where((cs == ct)[:, None], g, 0.0)
        wk = tl.load(w + h * K + k, mask=hm, other=0.0).to(tl.float32)
        acc += g * wk[None, :]
    tl.store(dext + (b * L + s[:, None]) * H + h[None, :], acc, mask=sm[:, None] & hm[None, :])


@triton.jit
def _bwd_weight_kernel(dy, ext, count, dw_part, T, H, L, NT, K: tl.constexpr, HAS_RESETS: tl.constexpr,
                       BT: tl.constexpr, BH: tl.constexpr):
    b, pt, ph = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = pt * BT + tl.arange(0, BT)
    h = ph * BH + tl.arange(0, BH)
    tm, hm = t < T, h < H
    m2 = tm[:, None] & hm[None, :]
    g = tl.load(dy + (b * T + t[:, None]) * H + h[None, :], mask=m2, other=0.0).to(tl.float32)
    if HAS_RESETS:
        ct = tl.load(count + b * L + (K - 1) + t, mask=tm, other=0)
    row = (b * NT + pt) * K
    for k in tl.static_range(K):
        s = t + k
        xv = tl.load(ext + (b * L + s[:, None]) * H + h[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_RESETS:
            cs = tl.load(count + b * L + s, mask=tm, other=0)
            xv = tl.where((cs == ct)[:, None], xv, 0.0)
        tl.store(dw_part + (row + k) * H + h, tl.sum(g * xv, axis=0), mask=hm)


_BT, _BH = 64, 64


def _launch_fwd(ext: Tensor, w: Tensor, bias: Tensor | None, count: Tensor | None, T: int) -> Tensor:
    B, L, H = ext.shape
    y = torch.empty(B, T, H, device=ext.device, dtype=ext.dtype)
    grid = (B, triton.cdiv(T, _BT), triton.cdiv(H, _BH))
    launch(_fwd_kernel, grid, ext, w, bias if bias is not None else w, count if count is not None else ext, y, T, H,
           L, K=w.shape[1], HAS_BIAS=bias is not None, HAS_RESETS=count is not None, BT=_BT, BH=_BH)
    return y


def _launch_bwd(dy: Tensor, ext: Tensor, w: Tensor, count: Tensor | None, T: int) -> tuple[Tensor, Tensor]:
    B, L, H = ext.shape
    K = w.shape[1]
    dext = torch.empty(B, L, H, device=dy.device, dtype=torch.float32)
    launch(_bwd_input_kernel, (B, triton.cdiv(L, _BT), triton.cdiv(H, _BH)), dy, w,
           count if count is not None else dy, dext, T, H, L, K=K, HAS_RESETS=count is not None, BS=_BT, BH=_BH)
    nt = triton.cdiv(T, _BT)
    part = torch.empty(B * nt, K, H, device=dy.device, dtype=torch.float32)
    launch(_bwd_weight_kernel, (B, nt, triton.cdiv(H, _BH)), dy, ext, count if count is not None else dy, part, T,
           H, L, nt, K=K, HAS_RESETS=count is not None, BT=_BT, BH=_BH)
    return dext, part


class _CausalConv1dTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, bias: Tensor | None, state: Tensor, count: Tensor | None) -> Tensor:
        ext = torch.cat([state.to(x.dtype), x], dim=1).contiguous()
        w = w.contiguous()
        ctx.save_for_backward(ext, w, count)
        ctx.has_bias = bias is not None
        ctx.T = x.shape[1]
        y = _launch_fwd(ext, w, bias, count, x.shape[1])
        if dry_run_active():  # a precompile pass: ask for the backward kernels too
            _launch_bwd(torch.empty_like(y), ext, w, count, x.shape[1])
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        ext, w, count = ctx.saved_tensors
        dy = dy.contiguous()
        dext, part = _launch_bwd(dy, ext, w, count, ctx.T)
        dw = part.sum(0).t().to(w.dtype)
        db = dy.float().sum((0, 1)).to(w.dtype) if ctx.has_bias else None
        K1 = w.shape[1] - 1
        return dext[:, K1:].to(dy.dtype), dw, db, dext[:, :K1].to(dy.dtype), None


def causal_conv1d_triton(
    x: Tensor, weight: Tensor, bias: Tensor | None, initial_state: Tensor, resets: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv on CUDA; ``weight`` ``[H, K]``. Returns ``(y, final_state)``."""
    if weight.dim() != 2:
        raise ValueError(f"the triton causal_conv1d is depthwise: weight must be [H, K], got {tuple(weight.shape)}")
    count = reset_counts(resets, initial_state.shape[1]) if resets is not None else None
    y = _CausalConv1dTriton.apply(x.contiguous(), weight, bias, initial_state, count)
    return y, final_buffer(x, initial_state, count)
