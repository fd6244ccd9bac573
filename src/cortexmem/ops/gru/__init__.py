from .naive import gru_naive
from .segmented import gru_segmented

__all__ = ["gru_naive", "gru_segmented"]
