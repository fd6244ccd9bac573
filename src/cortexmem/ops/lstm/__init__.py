from .naive import lstm_naive
from .segmented import lstm_segmented

__all__ = ["lstm_naive", "lstm_segmented"]
