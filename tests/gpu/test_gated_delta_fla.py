"""Cross-check against fla's Triton gated delta rule on a GPU (two independent implementations must agree).

fla conventions (fla-core 0.6): ``g`` is the log decay and ``beta`` post-sigmoid, like ours; it does
not L2-normalise unless ``use_qk_l2norm_in_kernel=True`` and scales q by ``scale`` (default ``1/sqrt(K)``),
so we pass normalised q, k and ``scale=1.0``. Varlen runs (``cu_seqlens``, B = 1) are independent
sequences starting from zero state: our ``resets`` at the same boundaries must match them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cortexmem.ops.gated_delta import chunk_gated_delta_rule


def _rel_err(a, b):
    # fla's fp32 kernels may multiply in TF32 (~1e-3); a convention mismatch gives errors of order 1
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def _inputs(B, T, H, K, V, seed):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen) + 3.0)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=gen))
    s0 = torch.randn(B, H, K, V, generator=gen) * 0.1
    return [t.cuda() for t in (q, k, v, g, beta, s0)]


@pytest.mark.gpu
@pytest.mark.parametrize("T", [64, 300])
def test_forward_matches_fla(T):
    fla_gdr = pytest.importorskip("fla.ops.gated_delta_rule")
    q, k, v, g, beta, s0 = _inputs(2, T, 4, 64, 64, seed=T)
    o_ref, s_ref = fla_gdr.chunk_gated_delta_rule(
        q, k, v, g, beta, scale=1.0, initial_state=s0, output_final_state=True
    )
    o, s = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64, initial_state=s0)
    assert _rel_err(o, o_ref) < 1e-2
    assert _rel_err(s, s_ref) < 1e-2


@pytest.mark.gpu
def test_resets_match_fla_varlen():
    fla_gdr = pytest.importorskip("fla.ops.gated_delta_rule")
    q, k, v, g, beta, _ = _inputs(1, 200, 2, 64, 64, seed=0)
    bounds = [0, 37, 100, 129, 200]  # segment starts fall mid-chunk
    cu = torch.tensor(bounds, dtype=torch.long, device="cuda")
    o_ref, s_ref = fla_gdr.chunk_gated_delta_rule(
        q, k, v, g, beta, scale=1.0, output_final_state=True, cu_seqlens=cu
    )
    resets = torch.zeros(1, 200, dtype=torch.bool, device="cuda")
    resets[0, bounds[1:-1]] = True
    o, s = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64, resets=resets)
    assert _rel_err(o, o_ref) < 1e-2
    assert _rel_err(s[0], s_ref[-1]) < 1e-2
