"""Backend registry: listing and selection, build-time checks, CORTEX_FORCE_PYTORCH, Triton modules imported lazily."""

from __future__ import annotations

import pytest
import torch

import cortexmem
from cortexmem.ops.registry import check_requested, list_backends, select_backend


def test_registry_lists_and_selects():
    ops = list_backends()
    assert "causal_conv1d" in ops and {b.name for b in ops["causal_conv1d"]} >= {"torch", "triton"}
    assert select_backend("causal_conv1d", device="cpu", dtype=torch.float32).name == "torch"


def test_explicit_unsupported_backend_fails_at_build_time():
    with pytest.raises(ValueError, match="unknown backend 'cuda-magic'"):
        check_requested("causal_conv1d", "cuda-magic")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cannot run here"):
            cortexmem.build_cell(cortexmem.CausalConv1dCellConfig(hidden_size=8, backend="triton"))
    with pytest.raises(ValueError, match="unknown op"):
        select_backend("no_such_op")


def test_force_pytorch_env(monkeypatch):
    monkeypatch.setenv("CORTEX_FORCE_PYTORCH", "1")
    table = {b.name: b for b in list_backends()["causal_conv1d"]}
    assert "disabled" in table["triton"].unavailable_reason()


def test_triton_backends_import_their_modules_only_when_called():
    """Listing the gated-delta backends imports no Triton module (a CPU process may lack Triton)."""
    import subprocess
    import sys

    code = ("import sys; from cortexmem.ops.registry import backends_for; b = backends_for('gated_delta'); "
            "assert {'triton', 'triton_autograd'} <= set(b); "
            "assert not [m for m in sys.modules if m.startswith('cortexmem.ops.gated_delta.triton')]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_supports_gets_the_inputs_dtype():
    """A shape limit may hold for some dtypes only (the gated-delta Triton kernels' 16-bit head sizes)."""
    from cortexmem.ops.registry import Backend

    b = Backend(op="demo", name="demo", fn=lambda: None,
                supports=lambda dtype=None, dk=0, **_: "16-bit heads of 64" if dtype == torch.bfloat16 and dk != 64
                else None)
    assert b.rejects("cpu", torch.bfloat16, dk=72) == "16-bit heads of 64"
    assert b.rejects("cpu", torch.float32, dk=72) is None
    assert b.rejects("cpu", torch.bfloat16, dk=64) is None
