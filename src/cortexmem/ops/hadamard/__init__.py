from .fast import fwht, hadamard_transform, srht
from .naive import hadamard_matrix, hadamard_transform_naive, next_pow2

__all__ = ["fwht", "hadamard_transform", "srht", "hadamard_matrix", "hadamard_transform_naive", "next_pow2"]
