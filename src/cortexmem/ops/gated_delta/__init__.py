"""Gated delta rule: ``naive`` (specification), ``chunk`` (WY/UT chunkwise), ``recurrent`` (one decoding step),
``triton_fwd``, ``triton_bwd``.

All take ``g = log alpha`` (fla's convention); see :mod:`.naive` for the shared contract. Op ``gated_delta`` has
backends ``torch`` (the chunked op, with autograd), ``triton`` (CUDA, forward only: chosen by ``auto`` when no
gradient is needed) and ``triton_autograd`` (CUDA, bf16 / fp32, Triton forward and backward: chosen by
``auto`` for training on CUDA); ``cortex doctor`` checks each against the naive loop (gradients too, for the
differentiable ones).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...ops.registry import register_backend, register_reference, select_backend
from .checks import (
    TRITON_BWD_MIN_DIM,
    TRITON_HALF_DIMS,
    TRITON_MAX_DK,
    needs_grad,
    triton_autograd_rejects,
    triton_rejects,
)
from .chunk import chunk_gated_delta_rule
from .naive import gated_delta_rule_naive
from .recurrent import gated_delta_rule_step


# the Triton modules are imported at the first call (an import statement, which torch.compile traces); every backend
# takes chunk_gated_delta_rule's signature
def _triton(*args, **kwargs):
    from .triton_fwd import triton_gated_delta_rule

    return triton_gated_delta_rule(*args, **kwargs)


def _triton_autograd(*args, **kwargs):
    from .triton_bwd import triton_gated_delta_rule_autograd

    return triton_gated_delta_rule_autograd(*args, **kwargs)


def _doctor_inputs(device: torch.device, dtype: torch.dtype) -> tuple:
    gen = torch.Generator().manual_seed(0)
    # 4 chunks of 64 (bf16 inputs take bf16 products, as at real lengths); odd heads the Triton kernels pad inside
    # for fp32, heads of 64 for 16-bit inputs (the Triton kernels take no padded heads there: TRITON_HALF_DIMS)
    half = dtype in (torch.bfloat16, torch.float16)
    B, T, NH, Dk, Dv = (2, 197, 2, 64, 64) if half else (2, 197, 2, 72, 66)
    q = F.normalize(torch.randn(B, T, NH, Dk, generator=gen), dim=-1)
    k = F.normalize(torch.randn(B, T, NH, Dk, generator=gen), dim=-1)
    v = torch.randn(B, T, NH, Dv, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, NH, generator=gen) + 2)
    beta = torch.rand(B, T, NH, generator=gen)
    s0 = torch.randn(B, NH, Dk, Dv, generator=gen)
    r = torch.rand(B, T, generator=gen) < 0.1
    floats = tuple(t.to(device=device, dtype=dtype) for t in (q, k, v, g, beta, s0))
    return (*floats, True, r.to(device))


register_backend("gated_delta", "torch", chunk_gated_delta_rule, priority=0,
                 note="chunkwise WY/UT, log-space decay, exact in-chunk resets")
register_backend("gated_delta", "triton", _triton, devices=frozenset({"cuda"}),
                 dtypes=frozenset({torch.float32, torch.bfloat16, torch.float16}), priority=10, needs_triton=True,
                 forward_only=True, supports=triton_rejects,
                 limits=f"Dk <= {TRITON_MAX_DK}, bf16 / fp16 heads of {' or '.join(map(str, TRITON_HALF_DIMS))}, "
                        "chunk_size 16/32/64, no gradients",
                 note="forward only (no grad): WY kernel parallel over chunks, then S recurrence + read-out")
# below the forward-only kernel (which "auto" takes when no gradient is needed), above torch: training on CUDA,
# for the inputs it was seen right with on an H100 (tests/gpu/test_gated_delta_triton_bwd.py): bf16 and fp32 (3xTF32
# products), heads of 64 and 128 dims, with and without resets
register_backend("gated_delta", "triton_autograd", _triton_autograd, devices=frozenset({"cuda"}),
                 dtypes=frozenset({torch.bfloat16, torch.float32}), priority=5, needs_triton=True,
                 supports=triton_autograd_rejects,
                 limits=f"bf16 / fp32, heads of {TRITON_BWD_MIN_DIM} to {TRITON_MAX_DK} dims (bf16: "
                        f"{' or '.join(map(str, TRITON_HALF_DIMS))}), chunk_size 16/32/64",
                 note="Triton forward and backward (fp32 accumulation)")
register_reference("gated_delta", gated_delta_rule_naive, _doctor_inputs)


def gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    chunk_size: int = 64,
    initial_state: Tensor | None = None,
    output_final_state: bool = True,
    resets: Tensor | None = None,
    backend: str = "auto",
    check_decay: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Chunkwise gated delta rule through the backend registry (shapes as :func:`chunk_gated_delta_rule`).

    ``auto`` takes the Triton forward on CUDA only when no gradient is needed (grad mode off or no input requires
    grad) and the shape is proven on the GPU (see :data:`.checks.TRITON_MAX_DK`), else the torch path; an
    explicit ``backend="triton"`` the Triton forward cannot take is a ``ValueError``; ``backend="triton_autograd"``
    runs the Triton forward and backward (``auto``'s choice on CUDA for bf16 / fp32 inputs that need a gradient,
    heads of 64 to 128 dims).
    ``check_decay=False`` skips the ``g <= 0`` check, a host sync on GPU (for callers whose ``g`` is non-positive by
    construction).
    """
    impl = select_backend("gated_delta", backend, device=q.device, dtype=v.dtype, chunk_size=chunk_size,
                          needs_grad=needs_grad(q, k, v, g, beta, initial_state), dk=k.shape[-1],
                          dv=v.shape[-1])
    return impl.fn(q, k, v, g, beta, initial_state, output_final_state, resets, chunk_size=chunk_size,
                   check_decay=check_decay)


__all__ = ["chunk_gated_delta_rule", "gated_delta_rule", "gated_delta_rule_naive", "gated_delta_rule_step"]
