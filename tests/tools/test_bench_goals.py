"""``cortex bench`` speed goals: ratios oriented "above 1 is good", met/not met at the boundary, skipped (never met)
when a row is missing or failed; the CLI's goals section, unique row names and the one-line error for bad cells."""

from __future__ import annotations

import json

import pytest

from cortexmem.tools.bench import BenchRow
from cortexmem.tools.bench_goals import evaluate_goals, summary

L = "B4xT8192xH16xD128"
S = "B8xT2048xH4xD64"


def _rows(**over):
    rows = {
        f"gated_delta:ours {L}": BenchRow(f"gated_delta:ours {L}", "ours", fwd_bwd_ms=20.0, extra={"fwd_ms": 1.5}),
        f"gated_delta:fla {L}": BenchRow(f"gated_delta:fla {L}", "peer", extra={"fwd_ms": 1.2}),
        f"peer:sdpa-causal {L}": BenchRow(f"peer:sdpa-causal {L}", "peer", fwd_bwd_ms=10.0),
        f"gated_delta:ours {S}": BenchRow(f"gated_delta:ours {S}", "ours", fwd_bwd_ms=2.0),
        "stack:4xAXMS": BenchRow("stack:4xAXMS", "ours", fwd_bwd_graph_ms=50.0, step_graph_compiled_ms=0.4,
                                 extra={"step_compile_s": 30.0}),
        "peer:cudnn-lstm-4": BenchRow("peer:cudnn-lstm-4", "peer", fwd_bwd_ms=45.0),
        "cell:conv": BenchRow("cell:conv", "ours", fwd_bwd_ms=2.0),
        "peer:cortexcore-cell:conv": BenchRow("peer:cortexcore-cell:conv", "peer", fwd_bwd_ms=1.5),
        "cell:lstm": BenchRow("cell:lstm", "ours", fwd_bwd_ms=10.0),
        "peer:cortexcore-cell:lstm": BenchRow("peer:cortexcore-cell:lstm", "peer", status="not installed (X)"),
        "first-call:4xAXMS": BenchRow("first-call:4xAXMS", "ours", first_call_s=5.0),
    }
    rows.update(over)
    return [r for r in rows.values() if r is not None]


def _goals(rows):
    return evaluate_goals(rows, cells=["conv", "lstm"], batch=32, seq=256, d=256, layers=4, pattern="AXMS")


def test_goal_ratios_and_verdicts():
    goals = _goals(_rows())
    assert len(goals) == 9 and len({g.figure for g in goals}) == 9
    sdpa = next(g for g in goals if "SDPA" in g.goal)
    assert sdpa.measured == 20.0 and sdpa.ratio == pytest.approx(0.5) and sdpa.passed is False
    small = next(g for g in goals if S in g.figure)
    assert small.passed is True and small.ratio == pytest.approx(1.0)  # exactly at the budget: met
    fla = next(g for g in goals if "fla" in g.goal)
    assert fla.ratio == pytest.approx(0.8) and fla.passed is False
    cudnn = next(g for g in goals if "cuDNN" in g.goal)
    assert cudnn.ratio == pytest.approx(0.9) and not cudnn.passed
    step = next(g for g in goals if g.goal == "<= 0.5 ms")
    assert step.passed and step.ratio == pytest.approx(1.25)
    compile_ = next(g for g in goals if "step compile" in g.figure)
    assert compile_.unit == "s" and compile_.passed is False
    conv = next(g for g in goals if "cell conv" in g.figure)
    assert conv.ratio == pytest.approx(0.75) and conv.passed is False
    lstm = next(g for g in goals if "cell lstm" in g.figure)
    assert lstm.passed is None and lstm.status == "skipped" and "not installed" in lstm.detail
    first = next(g for g in goals if "first call" in g.figure)
    assert first.passed is False  # "< 5 s" is strict
    assert summary(goals) == "goals: 2 met, 6 not met, 1 skipped"


def test_missing_or_failed_rows_skip_a_goal():
    failed = BenchRow(f"gated_delta:ours {L}", "ours", status="failed: RuntimeError: illegal memory access")
    stack = BenchRow("stack:4xAXMS", "ours", fwd_bwd_graph_ms=40.0,
                     extra={"step_graph_compiled": "failed: BackendCompilerFailed: boom"})
    goals = _goals(_rows(**{f"gated_delta:ours {L}": failed, "stack:4xAXMS": stack, "peer:cudnn-lstm-4": None}))
    sdpa = next(g for g in goals if "SDPA" in g.goal)
    assert sdpa.passed is None and "illegal memory access" in sdpa.detail
    assert next(g for g in goals if "cuDNN" in g.goal).detail == "no row 'peer:cudnn-lstm-4' in this run"
    step = next(g for g in goals if g.goal == "<= 0.5 ms")
    assert step.passed is None and "BackendCompilerFailed: boom" in step.detail


def test_bench_goals_only_cli(tmp_path):
    from typer.testing import CliRunner

    from cortexmem.cli import app

    res = CliRunner().invoke(app, ["bench", "--cells", "conv,conv", "--batch", "2", "--seq", "8", "--d", "8",
                                   "--layers", "1", "--pattern", "L", "--repeats", "1", "--goals-only", "--first-call",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "bench.json").read_text())
    names = [r["name"] for r in data["rows"]]
    assert len(names) == len(set(names))
    assert "bare:lstm-1" not in names and "cell:conv" in names and "peer:cudnn-lstm-1" in names
    cell = next(r for r in data["rows"] if r["name"] == "cell:conv")
    assert cell["fwd_bwd_ms"] > 0 and cell["step_ms"] is None  # goals-only: eager forward+backward alone
    first = next(r for r in data["rows"] if r["name"] == "first-call:1xL")
    assert first["status"] == "ok" and 0 < first["first_call_s"] < 60
    goals = data["goals"]
    assert {"figure", "goal", "measured", "ratio", "passed", "status"} <= set(goals[0])
    assert [g["status"] for g in goals if "first call" in g["figure"]] == ["met" if first["first_call_s"] < 5
                                                                         else "NOT MET"]
    assert all(g["passed"] is None for g in goals if g["figure"].startswith("gated delta"))  # no GPU here
    assert data["meta"]["date"] and data["meta"]["device"].startswith("CPU")
    assert "goals:" in res.output and "skipped" in res.output


def test_bench_rejects_unknown_cells_in_one_line():
    from typer.testing import CliRunner

    from cortexmem.cli import app

    res = CliRunner().invoke(app, ["bench", "--cells", "lstm,nosuch"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown cell 'nosuch'; valid cells: ")
    assert "lstm, " in lines[0] and "gated_delta" in lines[0]  # the names the cells registered
