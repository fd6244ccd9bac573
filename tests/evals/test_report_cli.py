"""results.json schema, CSV, plots, --compare, and the CLI's argument errors (one line, exit code 2)."""

import csv
import json

import pytest
from typer.testing import CliRunner

from cortexmem.cli import app
from cortexmem.evals.ddp import DistContext
from cortexmem.evals.report import compare_table, load_results, write_results
from cortexmem.evals.schema import EvalResults
from cortexmem.evals.tasks import make_task
from cortexmem.evals.train import run_one

runner = CliRunner()
TINY = ["--epochs", "1", "--train-size", "32", "--test-size", "16", "--d-hidden", "8", "--batch-size", "16"]


def _results(settings, lengths=(8, 12)):
    cfg = settings(tasks=["delayed_recall", "needle"], stacks=["lstm", "conv"], lengths=list(lengths))
    runs = [run_one(s, make_task(t, L), cfg, DistContext()) for s in cfg.stacks for t in cfg.tasks
            for L in lengths]
    return EvalResults(created="2026-01-01T00:00:00+00:00", cortexmem_version="0.1.0", torch_version="x",
                       device="cpu", world_size=1, wall_time_s=1.0, settings=cfg, runs=runs)


def test_results_json_csv_and_plots(settings, tmp_path):
    res = _results(settings)
    paths = write_results(res, tmp_path)
    names = {p.name for p in paths}
    assert names == {"results.json", "results.csv", "learning_curves.png", "accuracy_heatmap.png",
                     "accuracy_vs_length.png"}
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    back = EvalResults.model_validate(json.loads((tmp_path / "results.json").read_text()))
    assert back == res
    assert {r.task for r in back.runs} == {"delayed_recall", "needle"}
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 8 and {"stack", "task", "length", "test_accuracy", "tokens_per_s"} <= set(rows[0])
    needle = next(r for r in back.runs if r.task == "needle")
    assert needle.slices and all(0 <= v <= 1 for v in needle.slices.values())


def test_schema_rejects_bad_files(settings, tmp_path):
    data = json.loads(_results(settings, lengths=(8,)).model_dump_json())
    data["runs"][0]["test_accuracy"] = 1.5
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not a valid results file"):
        load_results(tmp_path)
    with pytest.raises(ValueError, match="no results.json"):
        load_results(tmp_path / "missing")


def test_compare_table_matches_runs(settings):
    a = _results(settings, lengths=(8,))
    b = a.model_copy(update={"runs": [r.model_copy(update={"test_accuracy": 1.0}) for r in a.runs]})
    table = compare_table(a, b, "a", "b")
    assert table.row_count == len(a.runs)
    assert f"{1.0 - a.runs[0].test_accuracy:+.3f}" in list(table.columns[5].cells)[0]


def test_cli_end_to_end_and_compare(tmp_path):
    out = tmp_path / "a"
    r = runner.invoke(app, ["eval", "--task", "majority,dyck", "--stack", "lstm", "--lengths", "9,13",
                            "--out", str(out), *TINY])
    assert r.exit_code == 0, r.output
    res = load_results(out)
    got = [(x.task, x.length) for x in res.runs]
    assert got == [("majority", 9), ("majority", 13), ("dyck", 9), ("dyck", 13)]
    assert (out / "accuracy_vs_length.png").is_file() and not res.settings.quick
    r = runner.invoke(app, ["eval", "--compare", str(out), str(out)])
    assert r.exit_code == 0 and "+0.000" in r.output


@pytest.mark.parametrize("args,msg", [
    (["--task", "nope"], "unknown task 'nope'; valid: delayed_recall, majority, dyck, mqar, needle, all"),
    (["--stack", "nope"], "unknown stack 'nope'; valid: lstm, conv,"),
    (["--lengths", "64,0"], "--lengths must be comma-separated integers > 0"),
    (["--lengths", "abc"], "--lengths must be comma-separated integers > 0"),
    (["--device", "tpu"], "unknown --device 'tpu'; valid: cpu, cuda, auto"),
    (["--mqar-slices", "64"], "--mqar-slices must be 'zoology' or L:PAIRS"),
    (["--task", "mqar", "--mqar-slices", "64:32"], "--mqar-slices 64:32"),
    (["--compare", "/nonexistent/a", "/nonexistent/b"], "no results.json"),
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--chunk-size", "0"], "--chunk-size must be an integer >= 1, got 0"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--log-level", "loud"], "unknown --log-level 'loud'; valid: DEBUG, INFO, WARNING, ERROR"),
])
def test_cli_bad_arguments_are_one_line_exit_2(args, msg):
    r = runner.invoke(app, ["eval", *args])
    assert r.exit_code == 2
    err = r.stderr.strip()
    assert "\n" not in err and err.startswith("error: ") and msg in err


def test_quick_suite_per_task_settings():
    from cortexmem.evals.cli import DEFAULT_TRAINING, QUICK_TASK_SETTINGS, _settings, plan_runs

    args = dict(task=None, stack=None, epochs=None, batch_size=None, lr=3e-3, weight_decay=0.01, seed=0,
                lengths=None, mqar_slices=None, chunk_size=None, d_hidden=32, train_size=None, test_size=256,
                grad_clip=1.0, device="cpu")
    quick = _settings(**args)
    assert quick.quick and quick.epochs == DEFAULT_TRAINING["epochs"]
    for task, kv in QUICK_TASK_SETTINGS.items():
        per_task = quick.for_task(task)
        assert {k: getattr(per_task, k) for k in kv} == kv
    assert quick.for_task("dyck") == quick
    opts = {(t, tuple(sorted(o.items()))) for _, t, _, o in plan_runs(quick)}
    assert ("mqar", (("vocab_size", 66),)) in opts and ("needle", ()) in opts
    # the quick MQAR vocabulary keeps Zoology's constraint V > L at the quick length
    spec = make_task("mqar", None, vocab_size=66)
    assert spec.vocab_size > spec.length
    # a flag given explicitly applies to every task; outside the quick suite nothing is replaced
    given = _settings(**{**args, "epochs": 2})
    assert all(given.for_task(t).epochs == 2 for t in given.tasks)
    assert given.for_task("mqar").train_size == QUICK_TASK_SETTINGS["mqar"]["train_size"]
    named = _settings(**{**args, "task": "mqar,needle"})
    assert not named.quick and named.for_task("mqar") == named and not named.task_options
