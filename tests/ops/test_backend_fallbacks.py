"""Shapes beyond a backend's limits: ``auto`` falls back to the next backend (logged once, kept in
``fallbacks()``, described by ``cortex info``), never a crash; a backend asked for by name that cannot take the
shapes fails, at cell build when the cell knows its shapes."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import torch.nn.functional as F

import cortexmem
from cortexmem.ops import registry as backends
from cortexmem.ops.registry import (
    check_requested,
    describe_op,
    fallbacks,
    register_backend,
    select_backend,
)


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry for the test to change; the real one is back afterwards."""
    table = {op: dict(bs) for op, bs in backends._BACKENDS.items()}
    monkeypatch.setattr(backends, "_BACKENDS", table)
    monkeypatch.setattr(backends, "_FALLBACKS", {})
    return table


def _narrow(*, dk: int = 0, **_: object) -> str | None:
    return None if dk <= 4 else f"needs dk <= 4, got dk={dk}"


def test_auto_falls_back_beyond_limits_logs_once_and_records(registry, caplog):
    register_backend("probe", "narrow", lambda x: x, priority=10, supports=_narrow, limits="dk <= 4")
    register_backend("probe", "wide", lambda x: x, priority=0)
    assert select_backend("probe", device="cpu", dtype=torch.float32, dk=4).name == "narrow"
    assert fallbacks() == []
    with caplog.at_level(logging.DEBUG, logger="cortexmem.backends"):
        for _ in range(3):
            assert select_backend("probe", device="cpu", dtype=torch.float32, dk=8).name == "wide"
    msgs = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert msgs == ["probe: backend narrow cannot take these inputs (needs dk <= 4, got dk=8); falling back to wide"]
    assert fallbacks() == [{"op": "probe", "skipped": "narrow", "reason": "needs dk <= 4, got dk=8",
                            "chosen": "wide", "calls": 3}]
    # a device the backend does not run on is not a fallback
    register_backend("probe", "gpu_only", lambda x: x, priority=20, devices=frozenset({"cuda"}))
    select_backend("probe", device="cpu", dtype=torch.float32, dk=2)
    assert [f["skipped"] for f in fallbacks()] == ["narrow"]
    line = describe_op("probe", "cpu")
    assert "narrow (limits: dk <= 4; beyond them auto uses wide)" in line and line.endswith("chosen on cpu: narrow")


def test_by_name_beyond_limits_is_an_error(registry):
    register_backend("probe", "narrow", lambda x: x, priority=10, supports=_narrow, limits="dk <= 4")
    register_backend("probe", "wide", lambda x: x, priority=0)
    with pytest.raises(ValueError, match="probe: backend 'narrow' cannot run these inputs: needs dk <= 4, got dk=8"):
        select_backend("probe", "narrow", device="cpu", dtype=torch.float32, dk=8)
    with pytest.raises(ValueError, match="'narrow' was requested but cannot take these shapes: needs dk <= 4"):
        check_requested("probe", "narrow", dk=8)
    check_requested("probe", "narrow", dk=4)
    check_requested("probe", "narrow")  # no shapes given: only whether it can run here


def _runs_here(table, op, name):
    """The op's backend ``name`` as if this machine could run it (CPU, no Triton needed): its shape check is then
    the only thing between a cell and that backend."""
    table[op][name] = dataclasses.replace(table[op][name], needs_triton=False, devices=frozenset({"cpu", "cuda"}))


@pytest.mark.parametrize("op, backend, too_big, fits, message", [
    ("slstm", "triton", cortexmem.sLSTMCellConfig(hidden_size=256, num_heads=2),
     cortexmem.sLSTMCellConfig(hidden_size=128, num_heads=2), "head size 128 > 64"),
    ("mlstm", "triton", cortexmem.mLSTMCellConfig(hidden_size=512, num_heads=1),
     cortexmem.mLSTMCellConfig(hidden_size=64, num_heads=2), "dk=256, dv=512"),
    ("gated_delta", "triton_autograd", cortexmem.GatedDeltaCellConfig(hidden_size=64, num_heads=1, head_dim=256),
     cortexmem.GatedDeltaCellConfig(hidden_size=64, num_heads=1), "Dk <= 128"),
    ("gated_delta", "triton_autograd", cortexmem.GatedDeltaCellConfig(hidden_size=64, num_heads=2),
     cortexmem.GatedDeltaCellConfig(hidden_size=64, num_heads=1), "heads of 64 to 128 dims, got Dk=32"),
    ("gated_delta", "triton_autograd", cortexmem.GatedDeltaCellConfig(hidden_size=64, num_heads=1, chunk_size=8),
     cortexmem.GatedDeltaCellConfig(hidden_size=64, num_heads=1, chunk_size=32), "chunk_size must be 16, 32 or 64"),
    ("causal_conv1d", "triton", cortexmem.CausalConv1dCellConfig(hidden_size=8, channel_mixing=True),
     cortexmem.CausalConv1dCellConfig(hidden_size=8), "depthwise only"),
])
def test_cells_check_their_shapes_against_a_requested_backend_at_build(registry, op, backend, too_big, fits, message):
    _runs_here(registry, op, backend)
    with pytest.raises(ValueError, match=f"{op}: backend '{backend}' was requested but cannot take these shapes: "
                                         f".*{message}"):
        cortexmem.build_cell(too_big.model_copy(update={"backend": backend}))
    cortexmem.build_cell(fits.model_copy(update={"backend": backend}))


def test_gated_delta_wider_than_the_triton_kernels_runs_on_torch():
    from cortexmem.ops.gated_delta import chunk_gated_delta_rule, gated_delta_rule

    g = torch.Generator().manual_seed(0)
    B, T, NH, D = 1, 19, 1, 160  # Dk > TRITON_MAX_DK
    q, k = (F.normalize(torch.randn(B, T, NH, D, generator=g), dim=-1) for _ in range(2))
    v = torch.randn(B, T, NH, D, generator=g)
    gl, beta = F.logsigmoid(torch.randn(B, T, NH, generator=g)), torch.rand(B, T, NH, generator=g)
    o, s = gated_delta_rule(q, k, v, gl, beta, chunk_size=16)
    o_ref, s_ref = chunk_gated_delta_rule(q, k, v, gl, beta, chunk_size=16)
    assert torch.equal(o, o_ref) and torch.equal(s, s_ref)
    assert ("triton (limits: Dk <= 128, bf16 / fp16 heads of 64 or 128, chunk_size 16/32/64, no gradients; beyond "
            "them auto uses torch)") in describe_op("gated_delta", "cpu")
