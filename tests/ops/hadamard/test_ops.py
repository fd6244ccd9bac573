"""Fast Walsh-Hadamard transform vs the explicit Hadamard matrix; norm preservation; SRHT."""

from __future__ import annotations

import pytest
import torch

from cortexmem.ops.hadamard import fwht, hadamard_matrix, hadamard_transform, hadamard_transform_naive, srht


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 64])
def test_fwht_matches_matrix_and_is_orthonormal(n):
    x = torch.randn(5, 3, n, dtype=torch.float64)
    y = fwht(x)
    torch.testing.assert_close(y, x @ hadamard_matrix(n, dtype=torch.float64) / n**0.5, atol=1e-12, rtol=0)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-12, rtol=0)
    torch.testing.assert_close(fwht(y), x, atol=1e-12, rtol=0)  # orthonormal and symmetric: self-inverse


def test_hadamard_matrix_rows_orthogonal():
    h = hadamard_matrix(32, dtype=torch.float64)
    torch.testing.assert_close(h @ h.T, 32 * torch.eye(32, dtype=torch.float64))
    assert set(h.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("n", [3, 5, 6, 7, 12, 33])
def test_any_size_fallback_matches_reference_and_preserves_norm(n):
    x = torch.randn(4, n, dtype=torch.float64)
    y = hadamard_transform(x)
    torch.testing.assert_close(y, hadamard_transform_naive(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-12, rtol=0)


def test_fwht_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.randn(2, 6))
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard_matrix(12)


def test_srht_full_permutation_is_norm_preserving_and_matches_matrix():
    n = 16
    g = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
    perm = torch.randperm(n, generator=g)
    x = torch.randn(7, n, dtype=torch.float64)
    y = srht(x, signs, perm)
    ref = ((x * signs) @ hadamard_matrix(n, dtype=torch.float64) / n**0.5)[:, perm]
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-12, rtol=0)


def test_srht_subsampled_odd_sizes_match_matrix():
    n = 6  # 5 of the rows of the transform padded to N = 8
    signs = torch.tensor([1.0, -1, -1, 1, 1, -1], dtype=torch.float64)
    index = torch.tensor([7, 0, 3, 5, 1])
    x = torch.randn(3, n, dtype=torch.float64)
    xp = torch.nn.functional.pad(x * signs, (0, 2))
    ref = (xp @ hadamard_matrix(8, dtype=torch.float64) / 8**0.5)[:, index] * (8 / 5) ** 0.5
    torch.testing.assert_close(srht(x, signs, index), ref, atol=1e-12, rtol=0)


@pytest.mark.gpu
def test_fwht_cpu_equals_gpu():
    x = torch.randn(9, 128)
    torch.testing.assert_close(fwht(x.cuda()).cpu(), fwht(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        hadamard_transform(x[:, :100].cuda()).cpu(), hadamard_transform(x[:, :100]), atol=1e-5, rtol=0
    )
