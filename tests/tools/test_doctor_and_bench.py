"""``cortex doctor`` and ``cortex bench`` on CPU; bench's TF32 mode."""

from __future__ import annotations

import json

import pytest
import torch


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
