"""GatedDeltaCell: contract on its variants, step == sequence, chunk-size invariance, constant state size."""

from __future__ import annotations

import pytest
import torch

import cortexmem
from cortexmem import GatedDeltaCellConfig, build_cell
from tests.harness.contract import CHECKS, assert_steps_match_sequence

VARIANTS = {
    "compressor": dict(compressor="linear", rank=4),
    "no-conv": dict(use_short_conv=False),
    "head-dim": dict(num_heads=3, head_dim=4, conv_kernel_size=2),
}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_contract_on_variants(variant, check):
    torch.manual_seed(0)
    cfg = GatedDeltaCellConfig(**{"hidden_size": 16, "num_heads": 2, "chunk_size": 8, **VARIANTS[variant]})
    check(build_cell(cfg).eval())


def _cell(**kw):
    torch.manual_seed(0)
    return build_cell(GatedDeltaCellConfig(hidden_size=12, num_heads=2, chunk_size=8, **kw)).double()


def test_step_equals_sequence_across_chunks_with_resets():
    cell = _cell(compressor="linear", rank=5)
    x = torch.randn(2, 30, 12, dtype=torch.float64)
    r = torch.zeros(2, 30, dtype=torch.bool)
    r[0, 11] = r[1, 16] = True
    assert_steps_match_sequence(cell, x, r, atol=1e-10)


def test_chunk_size_does_not_change_the_function():
    a, b = _cell(), _cell()
    b.chunk_size = 64
    x = torch.randn(2, 70, 12, dtype=torch.float64)
    torch.testing.assert_close(a(x)[0], b(x)[0], atol=1e-10, rtol=0)


def test_state_size_is_constant_in_sequence_length():
    cell = _cell()
    sizes = {sum(v.numel() for v in cell(torch.randn(1, T, 12, dtype=torch.float64))[1].values(True, True))
             for T in (1, 9, 100)}
    assert sizes == {2 * 6 * 6 + 3 * 3 * 12}


def test_write_gates_ranges_and_compressor_strength():
    cell = _cell(compressor="linear", rank=3, alpha_max=0.9)
    g, beta = cell.write_gates(torch.randn(2, 7, 12, dtype=torch.float64) * 5)
    assert g.shape == beta.shape == (2, 7, 2)
    assert (g.exp() <= 0.9 + 1e-12).all() and (g.exp() > 0).all()
    assert ((beta >= 0) & (beta <= 1)).all()
    # the compressor's write strength can close the write entirely
    torch.nn.init.constant_(cell.strength.bias, -1e4)
    assert cell.write_gates(torch.randn(2, 7, 12, dtype=torch.float64))[1].abs().max() < 1e-12


def test_config_round_trip_and_errors():
    cfg = GatedDeltaCellConfig(hidden_size=16, num_heads=2, compressor="linear", rank=8)
    back = cortexmem.TaggedConfig.model_validate_json(cfg.model_dump_json())
    assert type(back) is GatedDeltaCellConfig and back == cfg
    with pytest.raises(ValueError, match="divisible"):
        build_cell(GatedDeltaCellConfig(hidden_size=10, num_heads=3))
    with pytest.raises(ValueError):
        GatedDeltaCellConfig(hidden_size=8, compressor="pca")
    with pytest.raises(ValueError):
        GatedDeltaCellConfig(hidden_size=8, alpha_max=1.5)


def test_in_preup_block():
    cfg = cortexmem.PreUpBlockConfig(cell=GatedDeltaCellConfig(num_heads=2, chunk_size=8))
    blk = cortexmem.build_block(cfg, 8)
    y, s = blk(torch.randn(2, 11, 8))
    assert y.shape == (2, 11, 8) and s["GatedDeltaCell", "S"].shape == (2, 2, 8, 8)


def test_init_recipes_set_decay_write_strength_and_the_induction_conv():
    import math

    import torch.nn.functional as F

    import cortexmem

    cell = cortexmem.build_cell(cortexmem.GatedDeltaCellConfig(hidden_size=32, num_heads=2, alpha_max=1.0))
    cell.init_decay(1e-3)
    cell.init_write(0.2)
    x = torch.zeros(1, 3, 32)
    g, b = cell.write_gates(x)
    # a zero input: 1 - a is the decay asked for, b the write strength
    torch.testing.assert_close(-g, torch.full_like(g, 1e-3), rtol=1e-4, atol=0)
    torch.testing.assert_close(b, torch.full_like(b, 0.2), rtol=1e-5, atol=0)
    assert math.isclose(F.softplus(cell.dt_bias[0]).item(), 1e-3, rel_tol=1e-4)
    cell.init_induction()
    width = cell.q_proj.weight.shape[0]
    w = cell.conv_weight
    assert torch.equal(cell.k_proj.weight, cell.q_proj.weight)
    assert torch.equal(w[width:2 * width, :-1], w[:width, 1:]) and not w[:width, 0].any()
    assert torch.equal(w[2 * width:, -1], torch.ones(width)) and not w[2 * width:, :-1].any()
    squeezed = cortexmem.build_cell(cortexmem.GatedDeltaCellConfig(hidden_size=32, num_heads=2, use_short_conv=False))
    with pytest.raises(ValueError, match="induction_init needs a gated-delta cell with use_short_conv=True"):
        squeezed.init_induction()
