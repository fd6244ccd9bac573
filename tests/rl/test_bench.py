"""``cortex rl bench`` / ``cortex rl report``: a tiny CPU smoke of the suite runner, its resume and merge."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torchrl")
pytest.importorskip("gymnasium")
pytest.importorskip("popgym")
from typer.testing import CliRunner  # noqa: E402

from cortexmem.cli import app  # noqa: E402
from cortexmem.rl.bench import STACKS, SUITE, aggregate, run_bench  # noqa: E402
from cortexmem.rl.envs import check_env  # noqa: E402

TINY = dict(frames=256, num_envs=4, rollout_len=64, bptt=16, d_hidden=8, device="cpu")


def test_suite_covers_the_required_abilities():
    assert len(SUITE) >= 10
    for ability in ("recall", "counting", "autoencoding", "repetition", "noisy control", "partially observed control",
                    "game"):
        assert ability in SUITE.values(), ability
    for env in SUITE:
        check_env(env)  # every suite env builds and has spaces the runner supports
    assert {"lstm_plain", "gru"} <= set(STACKS) and len(STACKS) >= 5


def test_bench_smoke_outputs_resume_and_report(tmp_path):
    out = tmp_path / "b"
    res = run_bench("RepeatPreviousEasy,BattleshipEasy", "gru,GD", seeds=1, jobs=1, out=out, **TINY)
    assert len(res["runs"]) == 4 and not res["failed"] and not res["not_run"]
    for name in ("results.json", "table.md", "curves.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "results.json").read_text())
    assert data["format"] == "cortexmem.rl.bench" and data["settings"]["frames"] == 256
    for run in data["runs"]:
        assert run["frames"] == 256 and run["mmer"] is not None and run["curve"] and run["frames_per_second"] > 0
        assert (out / "runs" / run["env"] / run["stack"] / "seed0" / "metrics.json").is_file()
    table = (out / "table.md").read_text()
    assert "| env | gru | GD |" in table and "mean over envs" in table and "±" in table
    agg = aggregate(data["runs"])
    assert agg[("BattleshipEasy", "GD")]["n"] == 1

    # the same command again finds every run done and trains nothing
    (out / "runs").rename(tmp_path / "moved")
    again = run_bench("RepeatPreviousEasy,BattleshipEasy", "gru,GD", seeds=1, jobs=1, out=out, **TINY)
    assert len(again["runs"]) == 4 and not (out / "runs").exists()

    # a second batch with another env, merged by `cortex rl report`
    other = tmp_path / "c"
    run_bench("CountRecallEasy", "gru", seeds=1, jobs=1, out=other, **TINY)
    res = CliRunner().invoke(app, ["rl", "report", str(out), str(other / "results.json"), "--out",
                                   str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert len(merged["runs"]) == 5 and (tmp_path / "merged" / "curves.png").is_file()


def test_bench_parallel_jobs_and_deadline(tmp_path):
    res = run_bench("RepeatPreviousEasy", "gru", seeds=2, jobs=2, out=tmp_path / "p", plots=False, **TINY)
    assert not (tmp_path / "p" / "curves.png").exists()
    assert sorted(r["seed"] for r in res["runs"]) == [0, 1] and not res["failed"]
    late = run_bench("RepeatFirstEasy", "gru", seeds=2, jobs=1, out=tmp_path / "q", max_minutes=1e-9, **TINY)
    assert late["runs"] == [] and len(late["not_run"]) == 2


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--envs", "RepeatPreviousEasy,NoSuchEnvEasy"], ["NoSuchEnvEasy", "Autoencode"]),
        (["--stacks", "gru,no-such-stack"], ["no-such-stack"]),
        (["--stacks", "gru,gru"], ["more than once"]),
        (["--seeds", "0"], [">= 1"]),
        (["--device", "tpu"], ["device"]),
    ],
)
def test_bench_bad_input_is_one_line_before_work(tmp_path, args, words):
    res = CliRunner().invoke(app, ["rl", "bench", "--frames", "256", "--out", str(tmp_path / "x"), *args])
    assert res.exit_code != 0
    msg = str(res.exception) if res.exception and not isinstance(res.exception, SystemExit) else res.output
    assert all(w in msg for w in words), msg
    assert not (tmp_path / "x").exists()
