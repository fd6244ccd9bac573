"""``cortex doctor`` checks each backend in its own process: a backend that kills its process (a segfault, an exit,
a hang) fails its own row only; every other row is reported as before, with a summary line and exit code 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

PLUGIN = textwrap.dedent("""
    import ctypes, os, time
    import torch
    from cortexmem.ops.registry import register_backend, register_reference

    F32 = frozenset({torch.float32})

    def twice(x):
        return x * 2

    def segfault(x):
        ctypes.string_at(0)  # reads address 0: SIGSEGV

    def exits(x):
        os._exit(3)

    def hangs(x):
        time.sleep(600)

    def thrice(x):
        return x * 3

    register_reference("probe_op", twice, lambda device, dtype: (torch.linspace(-1, 1, 5, device=device, dtype=dtype),))
    register_backend("probe_op", "segfault", segfault, priority=5, dtypes=F32)
    register_backend("probe_op", "exits", exits, priority=4)
    register_backend("probe_op", "hangs", hangs, priority=3, dtypes=F32)
    register_backend("probe_op", "good", twice, priority=2, dtypes=F32)
    register_backend("probe_op", "wrong", thrice, priority=1, dtypes=F32)
""")


@pytest.mark.parametrize("mode", ["--isolate", "--shared-worker"])
def test_doctor_survives_crashing_backends(tmp_path, mode):
    (tmp_path / "probe_backends.py").write_text(PLUGIN)
    src = os.path.dirname(os.path.dirname(__import__("cortexmem").__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), src]))
    out = tmp_path / "doctor.json"
    res = subprocess.run([sys.executable, "-m", "cortexmem.cli", "doctor", "--ops", "probe_op,causal_conv1d",
                          "--import", "probe_backends", "--timeout", "10", "--jobs", "2", mode, "--json", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    rows = {(r["backend"], r["device"], r["dtype"]): r for r in json.loads(out.read_text()) if r["device"] == "cpu"}
    segv = rows[("segfault", "cpu", "float32")]
    assert segv["status"] == "FAIL" and "killed by SIGSEGV" in segv["detail"] and "probe_op/segfault" in segv["detail"]
    assert "Segmentation fault" in segv["detail"]
    assert rows[("segfault", "cpu", "bfloat16")]["status"] == "skipped"
    for dtype in ("float32", "bfloat16"):  # the second row of a crashed backend runs in a fresh process
        assert rows[("exits", "cpu", dtype)]["detail"].startswith("crashed (exit code 3) while checking probe_op/exits")
    assert rows[("hangs", "cpu", "float32")]["detail"].startswith("timed out after 10 s while checking probe_op/hangs")
    assert rows[("good", "cpu", "float32")]["status"] == "pass"
    wrong = rows[("wrong", "cpu", "float32")]
    assert wrong["status"] == "FAIL" and wrong["max_err_out"] > 0.4
    assert rows[("torch", "cpu", "float32")]["status"] == rows[("torch", "cpu", "bfloat16")]["status"] == "pass"
    stats = [r["status"] for r in json.loads(out.read_text())]
    line = f"{stats.count('pass')} passed, {stats.count('FAIL')} failed, {stats.count('skipped')} skipped"
    assert stats.count("FAIL") == 5 and line in res.stdout
    assert res.stdout.rstrip().splitlines()[-1] == line


def test_doctor_unknown_op_is_one_error_line():
    from typer.testing import CliRunner

    from cortexmem.cli import app

    res = CliRunner().invoke(app, ["doctor", "--ops", "nosuch"])
    assert res.exit_code == 2 and "unknown op 'nosuch'; ops with a reference:" in res.output
    assert "gated_delta" in res.output
