"""Gated delta rule: ``naive`` (specification), ``chunk`` (WY/UT chunkwise), ``step`` (decoding)."""

from .chunk import chunk_gated_delta_rule
from .naive import gated_delta_rule_naive
from .step import gated_delta_rule_step

__all__ = ["chunk_gated_delta_rule", "gated_delta_rule_naive", "gated_delta_rule_step"]
