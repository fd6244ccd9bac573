"""Two-process data-parallel run (torchrun, gloo on CPU) gives the same results schema as a single process."""

import os
import subprocess
import sys
from pathlib import Path

import cortexmem
from cortexmem.evals.report import load_results

ARGS = ["--task", "delayed_recall,mqar", "--stack", "lstm", "--lengths", "16", "--epochs", "2",
        "--train-size", "64", "--test-size", "32", "--batch-size", "16", "--d-hidden", "8", "--no-plots"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = str(Path(cortexmem.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_torchrun_two_processes_same_schema(tmp_path):
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "cortexmem.evals", *ARGS, "--device", "cpu", "--out", str(ddp_out)]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    p = subprocess.run([sys.executable, "-m", "cortexmem.evals", *ARGS, "--out", str(single_out)],
                       env=_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    ddp, single = load_results(ddp_out), load_results(single_out)
    assert ddp.world_size == 2 and single.world_size == 1
    assert sorted(os.listdir(ddp_out)) == ["mqar_summary.md", "results.csv", "results.json"]
    assert [r.key for r in ddp.runs] == [r.key for r in single.runs]
    for a, b in zip(ddp.runs, single.runs, strict=True):
        assert set(a.model_dump()) == set(b.model_dump())
        assert 0 <= a.test_accuracy <= 1 and a.step_seq_max_abs_err is not None
        # each process steps over half of the shuffled train split: half the optimizer steps
        assert a.steps == b.steps // 2 and len(a.curves.train_loss) == a.steps
