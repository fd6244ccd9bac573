"""Fast Walsh-Hadamard transform (log2 N butterfly stages, out of place) and the SRHT built on it."""

from __future__ import annotations

import torch
from torch import Tensor

from .naive import next_pow2


def fwht(x: Tensor) -> Tensor:
    """Orthonormal WHT of the last dim ``[..., N]`` (``N`` a power of two) -> ``[..., N]``.

    Each stage splits pairs ``(a, b)`` at stride ``h`` and writes ``(a + b, a - b)`` into a *new* tensor, so
    no stage reads a value that an earlier part of the same stage has overwritten (the bug of a peer library's
    CPU kernel).
    """
    N = x.shape[-1]
    if N < 1 or N & (N - 1):
        raise ValueError(f"fwht needs a power-of-two last dim, got {N}; use hadamard_transform to pad")
    lead = x.shape[:-1]
    y = x.reshape(-1, N)
    h = 1
    while h < N:
        y = y.view(-1, N // (2 * h), 2, h)
        a, b = y[:, :, 0], y[:, :, 1]
        y = torch.stack([a + b, a - b], dim=2).reshape(-1, N)
        h *= 2
    return (y / N**0.5).view(*lead, N)


def hadamard_transform(x: Tensor, size: int | None = None) -> Tensor:
    """Any-size fallback: zero-pad the last dim ``n`` to ``N = size or next_pow2(n)`` and apply :func:`fwht`.

    Returns ``[..., N]``. The padded transform is orthonormal on ``R^N``, so ``||y|| = ||x||`` for every
    ``n``.
    """
    n = x.shape[-1]
    N = next_pow2(n) if size is None else size
    if N < n:
        raise ValueError(f"hadamard_transform: size {N} is smaller than the input dim {n}")
    if N != n:
        x = torch.nn.functional.pad(x, (0, N - n))
    return fwht(x)


def srht(x: Tensor, signs: Tensor, index: Tensor) -> Tensor:
    """Subsampled randomized Hadamard transform ``x [..., n] -> [..., m]``.

    ``signs`` ``[n]`` (+-1), ``index`` ``[m]`` (distinct rows of the ``N = next_pow2(max(n, m))``-point
    transform): ``y = sqrt(N / m) * (H_N pad(signs * x) / sqrt(N))[index]``, so ``E ||y||^2 = ||x||^2``, and
    exactly when ``m = N`` (then ``index`` is a permutation).
    """
    n = x.shape[-1]
    if signs.shape != (n,):
        raise ValueError(f"srht: signs must have shape [{n}], got {list(signs.shape)}")
    m = index.shape[0]
    N = next_pow2(max(n, m))
    y = hadamard_transform(x * signs.to(x.dtype), N)
    return y.index_select(-1, index) * (N / m) ** 0.5
