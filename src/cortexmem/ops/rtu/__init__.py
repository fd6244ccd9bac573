from .chunk import rtu_chunked, rtu_final_traces, rtu_full_chunked
from .naive import inject_traces, rtu_full_naive, rtu_naive

__all__ = [
    "rtu_chunked",
    "rtu_final_traces",
    "rtu_full_chunked",
    "inject_traces",
    "rtu_full_naive",
    "rtu_naive",
]
