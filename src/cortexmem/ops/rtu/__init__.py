from .chunk import rtu_final_traces, rtu_full_chunked, rtu_scan
from .naive import inject_traces, rtu_full_naive, rtu_naive

__all__ = [
    "rtu_scan",
    "rtu_final_traces",
    "rtu_full_chunked",
    "inject_traces",
    "rtu_full_naive",
    "rtu_naive",
]
