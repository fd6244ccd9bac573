"""Input validation shared by the gated-delta ops (messages name the expected and the received shapes)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_gated_delta_inputs(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
    initial_state: Tensor | None, resets: Tensor | None, check_decay: bool = True,
) -> None:
    """Raise ``ValueError``/``TypeError`` unless shapes are ``[B, T, NH, D]``, ``[B, T, NH]``, ``[B, T]``.

    ``check_decay=False`` skips :func:`check_log_decay` (for callers whose ``g`` is non-positive by construction).
    """
    for name, x in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta)):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"gated delta rule: {name} must be a floating-point tensor, got {got}")
    if k.dim() != 4:
        raise ValueError(f"gated delta rule: k must be [B, T, NH, Dk], got shape {tuple(k.shape)}")
    B, T, NH, Dk = k.shape
    if tuple(q.shape) != (B, T, NH, Dk):
        raise ValueError(f"gated delta rule: q must have shape {(B, T, NH, Dk)} like k, got {tuple(q.shape)}")
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, T, NH):
        raise ValueError(f"gated delta rule: v must be [{B}, {T}, {NH}, Dv], got shape {tuple(v.shape)}")
    for name, x in (("g", g), ("beta", beta)):
        if tuple(x.shape) != (B, T, NH):
            raise ValueError(f"gated delta rule: {name} must have shape {(B, T, NH)}, got {tuple(x.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (B, NH, Dk, v.shape[-1]):
        raise ValueError(
            f"gated delta rule: initial_state must have shape {(B, NH, Dk, v.shape[-1])}, "
            f"got {tuple(initial_state.shape)}"
        )
    if resets is not None and (tuple(resets.shape) != (B, T) or resets.dtype.is_floating_point):
        raise ValueError(
            f"gated delta rule: resets must be a bool tensor of shape {(B, T)}, "
            f"got {tuple(resets.shape)} {resets.dtype}"
        )
    if check_decay:
        check_log_decay(g)


def check_log_decay(g: Tensor) -> None:
    """``g`` is the log decay: a positive entry almost surely means ``alpha`` was passed instead of its log.

    One reduction per call (a host sync on GPU: a launch-bound caller then cannot queue work ahead of the GPU, so
    cells whose ``g`` is non-positive by construction pass ``check_decay=False``); skipped while compiling and
    while a CUDA graph is captured (a sync there invalidates the capture: ``GraphedModule`` of a gated-delta
    stack failed on it). Not called by the one-step op.
    """
    if torch.compiler.is_compiling() or g.numel() == 0:
        return
    if g.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    top = g.detach().max()
    if top > 0:
        raise ValueError(
            f"gated delta rule: g must be the LOG decay log(alpha) <= 0, got max(g) = {top.item():.4g}; "
            f"pass alpha.log() if you hold alpha"
        )


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd would record an op on these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# Widest key dimension that dispatch sends to the Triton forward: the GPU tests cover Dk <= 128 (fp32 and 16-bit);
# wider keys need more shared memory than one program of the state kernel has on sm_90.
TRITON_MAX_DK = 128

#: Head sizes the Triton kernels take for 16-bit inputs: heads the kernels need not pad. With padded heads
#: (Dk = 72, Dv = 66) the bf16 forward's output was wrong on an H100 (`cortex doctor`, relative RMS error 0.77) while
#: fp32 inputs of the same shapes were right; 64 and 128 are the sizes the bf16 GPU tests cover.
TRITON_HALF_DIMS = (64, 128)


def triton_rejects(*, needs_grad: bool = False, chunk_size: int = 64, dk: int | None = None, dv: int | None = None,
                   dtype: torch.dtype | None = None, **_: object) -> str | None:
    """Why the Triton forward cannot run (None when it can); also the backend's ``supports`` constraint."""
    if needs_grad:
        return "forward only (no autograd): inputs require grad; use backend 'torch' or torch.no_grad()"
    if chunk_size not in (16, 32, 64):
        return f"chunk_size must be 16, 32 or 64, got {chunk_size!r}"
    if dk is not None and dk > TRITON_MAX_DK:
        return f"keys need Dk <= {TRITON_MAX_DK} (wider ones not proven on the GPU), got Dk={dk}"
    for name, dim in (("Dk", dk), ("Dv", dv)):
        if dtype in (torch.bfloat16, torch.float16) and dim is not None and dim not in TRITON_HALF_DIMS:
            return f"bf16 / fp16 inputs need heads of {' or '.join(map(str, TRITON_HALF_DIMS))} dims, got {name}={dim}"
    return None


#: Narrowest head (keys and values) the Triton backward takes. Narrower heads give 16-wide dot tiles, which crashed
#: with an illegal memory access on an H100 (Triton 3.6) in bf16 and fp32; ``auto`` sends them to the torch path.
TRITON_BWD_MIN_DIM = 64


def triton_autograd_rejects(*, chunk_size: int = 64, dk: int | None = None, dv: int | None = None,
                            dtype: torch.dtype | None = None, **_: object) -> str | None:
    """Why the differentiable Triton path (``triton_autograd``) cannot run: the forward's shape limits, heads
    narrower than :data:`TRITON_BWD_MIN_DIM` (None when it can); also that backend's ``supports`` constraint."""
    for name, dim in (("Dk", dk), ("Dv", dv)):
        if dim is not None and dim < TRITON_BWD_MIN_DIM:
            return f"the Triton backward needs heads of {TRITON_BWD_MIN_DIM} to {TRITON_MAX_DK} dims, got {name}={dim}"
    return triton_rejects(needs_grad=False, chunk_size=chunk_size, dk=dk, dv=dv, dtype=dtype)
