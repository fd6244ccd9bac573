"""Explicit (Sylvester) Hadamard matrix: the reference the fast transform is checked against."""

from __future__ import annotations

import torch
from torch import Tensor


def next_pow2(n: int) -> int:
    """Smallest power of two ``>= n`` (``n >= 1``)."""
    if n < 1:
        raise ValueError(f"next_pow2 expects n >= 1, got {n}")
    return 1 << (n - 1).bit_length()


def hadamard_matrix(n: int, *, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Unnormalised Sylvester Hadamard matrix ``[n, n]`` of +-1 entries; ``n`` must be a power of two."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"hadamard_matrix needs a power-of-two size, got {n}")
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard_transform_naive(x: Tensor) -> Tensor:
    """Orthonormal Walsh-Hadamard transform of the last dim of ``x`` ``[..., n]`` zero-padded to
    ``N = next_pow2(n)``: ``pad(x) @ H_N / sqrt(N)`` -> ``[..., N]``."""
    n = x.shape[-1]
    N = next_pow2(n)
    xp = torch.nn.functional.pad(x, (0, N - n))
    return xp @ hadamard_matrix(N, dtype=x.dtype, device=x.device) / N**0.5
