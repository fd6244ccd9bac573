"""Our gated-delta op and cells on CUDA against the fp64 CPU reference (no third-party kernels needed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cortexmem import GatedDeltaCellConfig, HybridCellConfig, build_cell
from cortexmem.ops.gated_delta import chunk_gated_delta_rule, gated_delta_rule_naive


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_chunk_on_cuda_matches_cpu_reference(dtype, tol):
    gen = torch.Generator().manual_seed(0)
    B, T, NH, Dk, Dv = 2, 150, 3, 32, 16
    q = F.normalize(torch.randn(B, T, NH, Dk, generator=gen, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B, T, NH, Dk, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, NH, Dv, generator=gen, dtype=torch.float64)
    g = F.logsigmoid(torch.randn(B, T, NH, generator=gen, dtype=torch.float64) + 3)
    beta = torch.rand(B, T, NH, generator=gen, dtype=torch.float64)
    s0 = torch.randn(B, NH, Dk, Dv, generator=gen, dtype=torch.float64)
    r = torch.rand(B, T, generator=gen) < 0.05
    o_ref, s_ref = gated_delta_rule_naive(q, k, v, g, beta, s0, resets=r)
    dev = [t.to("cuda", dtype) for t in (q, k, v, g, beta, s0)]
    o, s = chunk_gated_delta_rule(*dev[:5], chunk_size=64, initial_state=dev[5], resets=r.cuda())
    assert o.dtype == dtype
    for a, b in ((o, o_ref), (s, s_ref)):
        err = ((a.double().cpu() - b).norm() / b.norm()).item()
        assert err < tol


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [GatedDeltaCellConfig(hidden_size=32, num_heads=2, chunk_size=16),
                                 HybridCellConfig(hidden_size=32, num_heads=2, chunk_size=16, window=8)],
                         ids=["gated-delta", "hybrid"])
def test_cells_on_cuda_step_equals_sequence(cfg):
    torch.manual_seed(0)
    cell = build_cell(cfg).cuda()
    x = torch.randn(2, 40, 32, device="cuda")
    r = torch.zeros(2, 40, dtype=torch.bool, device="cuda")
    r[0, 17] = True
    y, _ = cell(x, resets=r)
    st, ys = None, []
    for t in range(40):
        yt, st = cell.step(x[:, t], st, resets=r[:, t])
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys, 1), y, atol=1e-4, rtol=1e-4)
    y_cpu, _ = cell.cpu()(x.cpu(), resets=r.cpu())
    torch.testing.assert_close(y.cpu(), y_cpu, atol=1e-4, rtol=1e-4)
