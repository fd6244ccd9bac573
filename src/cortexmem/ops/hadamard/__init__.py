"""Walsh-Hadamard transform: ``naive`` (dense matrix, the reference), ``torch`` (butterfly stages)."""

from __future__ import annotations

import torch

from ..registry import register_backend, register_reference
from .chunk import fwht, hadamard_transform, srht
from .naive import hadamard_matrix, hadamard_transform_naive, next_pow2

register_backend("hadamard", "torch", hadamard_transform, priority=0, note="log2(N) butterfly stages")


def _doctor_inputs(device: torch.device, dtype: torch.dtype) -> tuple:
    x = torch.randn(3, 5, 24, generator=torch.Generator().manual_seed(0))  # padded to 32 inside
    return (x.to(device=device, dtype=dtype),)


register_reference("hadamard", hadamard_transform_naive, _doctor_inputs)

__all__ = ["fwht", "hadamard_transform", "srht", "hadamard_matrix", "hadamard_transform_naive", "next_pow2"]
