"""Causal conv1d: ``naive`` (reference loop), ``torch`` (one unfold), ``triton`` (CUDA, depthwise)."""

from __future__ import annotations

import torch
from torch import Tensor

from ...ops.registry import register_backend, register_reference, select_backend
from .chunk import causal_conv1d_torch
from .naive import causal_conv1d_naive


def _triton(*args, **kwargs):
    from .triton import causal_conv1d_triton

    return causal_conv1d_triton(*args, **kwargs)


def _depthwise_only(depthwise: bool = True, **_: object) -> str | None:
    return None if depthwise else "channel-mixing weights are not supported (depthwise only)"


register_backend("causal_conv1d", "torch", causal_conv1d_torch, priority=0, note="one unfold + einsum")
register_backend("causal_conv1d", "triton", _triton, devices=frozenset({"cuda"}), priority=10, needs_triton=True,
                 supports=_depthwise_only, limits="depthwise weights", note="fused fwd/bwd kernels")


def _doctor_inputs(device: torch.device, dtype: torch.dtype) -> tuple:
    g = torch.Generator().manual_seed(0)
    B, T, H, K = 2, 37, 24, 4
    x = torch.randn(B, T, H, generator=g)
    w = torch.randn(H, K, generator=g) / K
    b = torch.randn(H, generator=g)
    s0 = torch.randn(B, K - 1, H, generator=g)
    r = torch.rand(B, T, generator=g) < 0.1
    return tuple(t.to(device=device, dtype=dtype) for t in (x, w, b, s0)) + (r.to(device),)


register_reference("causal_conv1d", causal_conv1d_naive, _doctor_inputs)


def causal_conv1d(
    x: Tensor, weight: Tensor, bias: Tensor | None, initial_state: Tensor, resets: Tensor | None = None,
    *, backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """x ``[B, T, H]``, weight ``[H, K]`` or ``[H_out, H, K]``, state ``[B, K-1, H]`` -> ``(y, final_state)``."""
    impl = select_backend("causal_conv1d", backend, device=x.device, dtype=x.dtype, depthwise=weight.dim() == 2)
    return impl.fn(x, weight, bias, initial_state, resets)


__all__ = ["causal_conv1d", "causal_conv1d_naive", "causal_conv1d_torch"]
