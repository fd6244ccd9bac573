from .chunk import agalite_chunked, gated_scan
from .naive import agalite_naive, oscillators

__all__ = ["agalite_chunked", "agalite_naive", "gated_scan", "oscillators"]
