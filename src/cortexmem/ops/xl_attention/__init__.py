"""Transformer-XL relative attention over a memory of past keys: ``naive`` (token loop), ``torch`` (blocks)."""

from __future__ import annotations

import torch

from ..registry import register_backend, register_reference
from .chunk import xl_attention
from .naive import xl_attention_naive

register_backend("xl_attention", "torch", xl_attention, priority=0, note="query blocks over [memory, call]")


def _doctor_inputs(device: torch.device, dtype: torch.dtype) -> tuple:
    g = torch.Generator().manual_seed(0)
    B, T, nh, dh, M = 2, 37, 2, 8, 16
    q, k, v = (torch.randn(B, T, nh, dh, generator=g) for _ in range(3))
    rel = torch.randn(M + 1, nh, dh, generator=g)
    u_bias, v_bias = torch.randn(nh, dh, generator=g), torch.randn(nh, dh, generator=g)
    k_mem, v_mem = torch.randn(B, M, nh, dh, generator=g), torch.randn(B, M, nh, dh, generator=g)
    floats = tuple(t.to(device=device, dtype=dtype) for t in (q, k, v, rel, u_bias, v_bias, k_mem, v_mem))
    n_valid = torch.tensor([5, M], device=device)
    resets = (torch.rand(B, T, generator=g) < 0.1).to(device)
    return floats + (n_valid, resets)


register_reference("xl_attention", xl_attention_naive, _doctor_inputs)

__all__ = ["xl_attention", "xl_attention_naive"]
