"""Gated delta rule: ``naive`` (specification), ``chunk`` (WY/UT chunkwise), ``step`` (decoding).

All take ``g = log alpha`` (fla's convention); see :mod:`.naive` for the shared contract. The chunked op is
registered as backend ``torch`` of op ``gated_delta`` and checked by ``cortex doctor`` against the naive loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core.backends import register_backend, register_reference
from .chunk import chunk_gated_delta_rule
from .naive import gated_delta_rule_naive
from .step import gated_delta_rule_step


def _chunk_positional(q, k, v, g, beta, initial_state=None, output_final_state=True, resets=None):
    return chunk_gated_delta_rule(q, k, v, g, beta, initial_state=initial_state,
                                  output_final_state=output_final_state, resets=resets)


def _doctor_inputs(device: torch.device, dtype: torch.dtype) -> tuple:
    gen = torch.Generator().manual_seed(0)
    B, T, NH, Dk, Dv = 2, 37, 2, 8, 6
    q = F.normalize(torch.randn(B, T, NH, Dk, generator=gen), dim=-1)
    k = F.normalize(torch.randn(B, T, NH, Dk, generator=gen), dim=-1)
    v = torch.randn(B, T, NH, Dv, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, NH, generator=gen) + 2)
    beta = torch.rand(B, T, NH, generator=gen)
    s0 = torch.randn(B, NH, Dk, Dv, generator=gen)
    r = torch.rand(B, T, generator=gen) < 0.1
    floats = tuple(t.to(device=device, dtype=dtype) for t in (q, k, v, g, beta, s0))
    return (*floats, True, r.to(device))


register_backend("gated_delta", "torch", _chunk_positional, priority=0,
                 note="chunkwise WY/UT, log-space decay, exact in-chunk resets")
register_reference("gated_delta", gated_delta_rule_naive, _doctor_inputs)

__all__ = ["chunk_gated_delta_rule", "gated_delta_rule_naive", "gated_delta_rule_step"]
