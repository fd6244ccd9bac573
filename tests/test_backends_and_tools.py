"""Backend registry, StepRunner (eager on CPU), doctor and bench on CPU."""

from __future__ import annotations

import json

import pytest
import torch

import cortexmem
from cortexmem import StepRunner
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


def test_step_runner_eager_matches_step():
    torch.manual_seed(0)
    stack = cortexmem.build_cortex(cortexmem.CortexStackConfig(d_hidden=16, blocks=[
        cortexmem.PreUpBlockConfig(cell=cortexmem.LSTMCellConfig()),
        cortexmem.PassThroughBlockConfig(cell=cortexmem.CausalConv1dCellConfig()),
    ])).eval()
    runner = StepRunner(stack, batch=3, device="cpu")
    state = None
    for t in range(6):
        x = torch.randn(3, 16)
        r = torch.tensor([t == 3, False, t == 4])
        with torch.no_grad():
            ref, state = stack.step(x, state, resets=r)
        torch.testing.assert_close(runner.step(x, resets=r), ref, atol=0, rtol=0)
    with pytest.raises(ValueError, match="expected x of shape"):
        runner.step(torch.randn(2, 16))
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        StepRunner(stack, batch=3, device="cpu", use_graph=True)


def test_doctor_and_bench_cli(tmp_path):
    from typer.testing import CliRunner

    from cortexmem.cli import app

    res = CliRunner().invoke(app, ["doctor", "--jobs", "3", "--json", str(tmp_path / "d.json")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "d.json").read_text())
    assert any(r["status"] == "pass" and r["backend"] == "torch" for r in rows)
    n_pass, n_skip = sum(r["status"] == "pass" for r in rows), sum(r["status"] == "skipped" for r in rows)
    assert f"{n_pass} passed, 0 failed, {n_skip} skipped" in res.output
    res = CliRunner().invoke(app, ["bench", "--cells", "lstm,conv", "--batch", "2", "--seq", "8", "--d", "8",
                                   "--layers", "1", "--pattern", "L", "--repeats", "1", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "bench.json").read_text())
    names = {r["name"]: r for r in data["rows"]}
    assert names["cell:lstm"]["fwd_bwd_ms"] > 0 and names["peer:cudnn-lstm-1"]["fwd_bwd_ms"] > 0
    assert names["bare:lstm-1"]["fwd_bwd_ms"] > 0 and names["bare:lstm-1"]["step_ms"] > 0
    assert "peer:cudnn-lstm-1 fwd_bwd_ms / bare:lstm-1 fwd_bwd_ms" in data["ratios"]
    assert "not installed" in names["peer:cortexcore-1xL"]["status"] or names["peer:cortexcore-1xL"]["fwd_bwd_ms"]
    assert data["precision"]["tf32"] == "default" and data["step_compile"] == "default"
    assert not any(n.startswith("first-call:") for n in names)  # a fresh-process first call only on CUDA by default
    assert any(g["figure"].startswith("first call") and g["passed"] is None for g in data["goals"])
    res = CliRunner().invoke(app, ["bench", "--cells", "conv", "--tf32", "sometimes"])
    assert res.exit_code == 2 and "--tf32 must be one of" in res.output
    res = CliRunner().invoke(app, ["bench", "--cells", "conv", "--step-compile", "fastest"])
    assert res.exit_code == 2 and "--step-compile must be one of" in res.output


def test_bench_tf32_mode_sets_and_restores():
    from cortexmem.tools.bench import tf32_mode

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with tf32_mode("on") as p:
        assert p == {"matmul_tf32": True, "cudnn_tf32": True}
    with tf32_mode("off") as p:
        assert p == {"matmul_tf32": False, "cudnn_tf32": False}
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    with pytest.raises(ValueError, match="tf32 must be one of"), tf32_mode("bf16"):
        pass


def test_graphed_module_eager_fallback_and_errors():
    import cortexmem
    from cortexmem import GraphedModule

    torch.manual_seed(0)
    stack = cortexmem.build_cortex_auto_stack(16, 2, "AXMS")
    g = GraphedModule(stack, batch=3, seq=11, device="cpu")
    assert not g.use_graph
    x = torch.randn(3, 11, 16)
    y, s = g(x)
    y_ref, s_ref = stack(x, None)
    torch.testing.assert_close(y, y_ref)
    y2, _ = g(x, s.detach())
    y2_ref, _ = stack(x, s_ref.detach())
    torch.testing.assert_close(y2, y2_ref)
    with pytest.raises(ValueError, match="shape"):
        g(torch.randn(3, 12, 16))
    with pytest.raises(ValueError, match="without resets"):
        g(x, resets=torch.zeros(3, 11, dtype=torch.bool))
    with pytest.raises(ValueError, match="constant"):
        g(x, s)
    with pytest.raises(ValueError, match="CUDA"):
        GraphedModule(stack, batch=3, seq=11, device="cpu", use_graph=True)
    with pytest.raises(TypeError, match="MemoryModule"):
        GraphedModule(torch.nn.Linear(3, 3), batch=3, seq=11, device="cpu")
    gr = GraphedModule(stack, batch=3, seq=11, device="cpu", resets=True)
    r = torch.zeros(3, 11, dtype=torch.bool)
    r[1, 5] = True
    torch.testing.assert_close(gr(x, resets=r)[0], stack(x, None, resets=r)[0])


def test_step_runner_rejects_unknown_compile_modes():
    import cortexmem
    from cortexmem import StepRunner
    from cortexmem.tools.bench import run_bench

    stack = cortexmem.build_cortex(cortexmem.CortexStackConfig(d_hidden=8, blocks=[
        cortexmem.PassThroughBlockConfig(cell=cortexmem.CausalConv1dCellConfig())]))
    with pytest.raises(ValueError, match="compile must be a bool or one of"):
        StepRunner(stack, batch=2, device="cpu", compile="fastest")
    with pytest.raises(TypeError, match="compile must be a bool or a str, got int"):
        StepRunner(stack, batch=2, device="cpu", compile=1)
    with pytest.raises(ValueError, match="step_compile must be one of"):
        run_bench(["conv"], step_compile="on")


@pytest.mark.parametrize("mode", [True, "default"])
def test_step_runner_compiled_matches_step_on_cpu(mode):
    import cortexmem
    from cortexmem import StepRunner

    torch.manual_seed(0)
    stack = cortexmem.build_cortex(cortexmem.CortexStackConfig(d_hidden=8, blocks=[
        cortexmem.PassThroughBlockConfig(cell=cortexmem.LSTMCellConfig()),  # nn.LSTM: a graph break, run eagerly
        cortexmem.PassThroughBlockConfig(cell=cortexmem.CausalConv1dCellConfig())])).eval()
    runner = StepRunner(stack, batch=2, device="cpu", compile=mode)
    state = None
    for t in range(3):
        x = torch.randn(2, 8)
        r = torch.tensor([t == 1, False])
        with torch.no_grad():
            ref, state = stack.step(x, state, resets=r)
        torch.testing.assert_close(runner.step(x, resets=r), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(runner.state.get(runner.keys[0]), state.get(runner.keys[0]), atol=1e-5, rtol=1e-5)



def test_triton_backends_import_their_modules_only_when_called():
    """Listing the gated-delta backends imports no Triton module (a CPU process may lack Triton)."""
    import subprocess
    import sys

    code = ("import sys; from cortexmem.ops.registry import backends_for; b = backends_for('gated_delta'); "
            "assert {'triton', 'triton_autograd'} <= set(b); "
            "assert not [m for m in sys.modules if m.startswith('cortexmem.ops.gated_delta.triton')]")
    subprocess.run([sys.executable, "-c", code], check=True)
