"""results.json schema, CSV, plots, --compare, and the CLI's argument errors (one line, exit code 2)."""

import csv
import json
from pathlib import Path

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
    (tmp_path / "results.json").write_text(json.dumps({**data, "schema_version": 1}))
    with pytest.raises(ValueError, match="has schema_version 1; this cortexmem reads 2"):
        load_results(tmp_path)
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
    (["--stack", "nope"], "unknown stack 'nope'; valid: lstm, gru, conv,"),
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


ARGS = dict(task=None, stack=None, epochs=None, batch_size=None, lr=3e-3, weight_decay=0.01, seed=0, lengths=None,
            mqar_slices=None, chunk_size=None, widths=None, train_size=None, test_size=None, grad_clip=1.0,
            device="cpu")


def test_per_task_settings_survive_named_tasks_and_stacks():
    from cortexmem.evals.cli import _settings
    from cortexmem.evals.presets import DEFAULT_TRAINING, TASK_TRAINING
    from cortexmem.evals.runner import plan_runs

    quick, notes = _settings(**ARGS)
    assert quick.quick and quick.epochs == DEFAULT_TRAINING["epochs"] and not notes
    for task, kv in TASK_TRAINING.items():
        assert {k: getattr(quick.for_task(task), k) for k in kv} == kv
    assert quick.for_task("dyck") == quick
    opts = {(t, tuple(sorted(o.items()))) for _, t, _, o, _ in plan_runs(quick)}
    assert ("mqar", (("vocab_size", 66),)) in opts and ("needle", ()) in opts
    spec = make_task("mqar", None, vocab_size=66)
    assert spec.vocab_size > spec.length
    # naming the task and a stack keeps MQAR's own training and vocabulary (it used to fall back to chance)
    named, notes = _settings(**{**ARGS, "task": "mqar", "stack": "lstm"})
    assert not named.quick and not notes
    assert named.for_task("mqar").train_size == TASK_TRAINING["mqar"]["train_size"]
    assert [o for _, _, _, o, _ in plan_runs(named)] == [{"vocab_size": 66}]
    # a flag applies to every task and says whose default it replaced, in one line
    given, notes = _settings(**{**ARGS, "epochs": 2})
    assert all(given.for_task(t).epochs == 2 for t in given.tasks)
    assert given.for_task("mqar").train_size == TASK_TRAINING["mqar"]["train_size"]
    assert notes == ["--epochs 2 replaces the per-task default of mqar (4), needle (4)"]
    # away from the default length MQAR's vocabulary follows the length, and the run says so
    sliced, notes = _settings(**{**ARGS, "task": "mqar", "mqar_slices": "128:8"})
    assert not sliced.task_options and len(notes) == 1 and "vocabulary of each length" in notes[0]


def test_widths_sweep_plans_one_run_per_width():
    from cortexmem.evals.cli import _settings
    from cortexmem.evals.runner import plan_runs

    s, _ = _settings(**{**ARGS, "task": "dyck", "stack": "lstm,conv", "widths": [8, 16]})
    assert s.widths == [8, 16] and s.d_hidden == 8
    assert [(st, d) for st, _, _, _, d in plan_runs(s)] == [("lstm", 8), ("lstm", 16), ("conv", 8), ("conv", 16)]


@pytest.mark.parametrize("args,msg", [
    (["--task", "mqar", "--lengths", "3"], "--lengths 3 does not fit task mqar: mqar needs an even length"),
    (["--preset", "nope"], "unknown --preset 'nope'; valid: zoology"),
    (["--preset", "zoology", "--d-hidden", "64"],
     "--preset zoology sets --task, --lengths, --mqar-slices, --d-hidden, --chunk-size itself; drop --d-hidden "
     "(presets: zoology)"),
    (["--preset", "zoology", "--task", "mqar"], "drop --task"),
    (["--quick"], "--quick shrinks a preset: use it with --preset (zoology)"),
    (["--d-hidden", "32,x"], "--d-hidden must be comma-separated integers > 0"),
    (["--workers", "0"], "--workers must be an integer >= 1, got 0"),
    (["--target-accuracy", "1.5"], "--target-accuracy must be in (0, 1], got 1.5"),
    (["--tf32", "maybe"], "--tf32 must be one of default, on, off, got 'maybe'"),
])
def test_cli_more_bad_arguments(args, msg):
    r = runner.invoke(app, ["eval", *args])
    assert r.exit_code == 2
    err = r.stderr.strip()
    assert "\n" not in err and err.startswith("error: ") and msg in err, err


def test_zoology_preset_quick_smoke(tmp_path):
    from cortexmem.evals.presets import PRESETS, QUICK_PRESETS
    from cortexmem.evals.stacks import available_stacks

    out = tmp_path / "z"
    r = runner.invoke(app, ["eval", "--preset", "zoology", "--quick", "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = load_results(out)
    pr = QUICK_PRESETS["zoology"]
    ok = set(pr.stacks) & set(available_stacks(pr.widths[0])[0]) & set(available_stacks(pr.widths[1])[0])
    assert pr.stacks == PRESETS["zoology"].stacks  # the smoke covers the sweep's stacks
    assert res.settings.preset == "zoology" and res.settings.widths == list(pr.widths)
    assert res.settings.target_accuracy == PRESETS["zoology"].target_accuracy == 0.99
    assert res.settings.tf32 == "on" and {x.tf32 for x in res.runs} == {"on"}
    assert {r.stack for r in res.runs} == ok and "transformer" in ok and "hybrid_w32" in ok
    assert len(res.runs) == len(ok) * len(pr.widths) * len(pr.slices)
    for run in res.runs:
        assert run.task == "mqar" and run.chance == pytest.approx(1 / 64) and run.state_floats > 0
    # the transformer's state is its KV cache at the sequence length: it grows with the width
    kv = {x.d_hidden: x.state_floats for x in res.runs if x.stack == "transformer"}
    assert kv[16] == 2 * kv[8] == 2 * 2 * (2 * 32 * 8 + 2 * 8)
    summary = (out / "mqar_summary.md").read_text()
    assert summary.count("\n") == 2 + len(ok) * len(pr.widths) and "32/2 (chance 0.0156)" in summary
    assert (out / "accuracy_vs_state.png").read_bytes()[:4] == b"\x89PNG"
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"d_hidden", "chance", "state_floats"} <= set(header)
    assert "chance" in r.output and "state" in r.output


def test_merge_joins_a_sweep_split_by_stack(settings, tmp_path):
    from cortexmem.evals.report import merge_results

    res = _results(settings, lengths=(8,))
    a = res.model_copy(update={"runs": [r for r in res.runs if r.stack == "lstm"]})
    b = res.model_copy(update={"runs": [r for r in res.runs if r.stack == "conv"]})
    for name, part in (("a", a), ("b", b)):
        write_results(part, tmp_path / name, plots=False)
    r = runner.invoke(app, ["eval", "--merge", str(tmp_path / "a"), "--merge", str(tmp_path / "b"), "--out",
                            str(tmp_path / "m"), "--no-plots"])
    assert r.exit_code == 0, r.output
    merged = load_results(tmp_path / "m")
    assert [x.key for x in merged.runs] == [x.key for x in res.runs] and merged.wall_time_s == 2.0
    with pytest.raises(ValueError, match="appears twice"):
        merge_results([a, a])
    other = b.model_copy(update={"settings": b.settings.model_copy(update={"epochs": 9})})
    with pytest.raises(ValueError, match="epochs differ"):
        merge_results([a, other])


def test_a_failed_run_keeps_the_others_and_the_same_command_trains_only_the_missing(tmp_path):
    from cortexmem.evals.stacks import build_stack, register_stack
    from cortexmem.stacks import named

    def flaky(d):  # an LSTM stack whose training fails on 13-token sequences (as a run out of memory would)
        stack = build_stack("lstm", d)
        real = stack.forward_sequence

        def forward_sequence(x, state, resets):
            if x.shape[1] >= 13:
                raise RuntimeError("CUDA out of memory.\nTried to allocate 96.00 MiB")
            return real(x, state, resets)

        stack.forward_sequence = forward_sequence
        return stack

    out = tmp_path / "sweep"
    cmd = ["eval", "--task", "majority", "--stack", "lstm,flaky", "--lengths", "9,13", "--out", str(out), *TINY]
    register_stack("flaky", flaky)
    try:
        r = runner.invoke(app, cmd)
        assert r.exit_code == 1, r.output
        first = load_results(out)
        assert [(x.stack, x.length) for x in first.runs] == [("lstm", 9), ("lstm", 13), ("flaky", 9)]
        (failed,) = first.skipped
        assert failed.stack == "flaky" and "majority@13" in failed.reason and "RuntimeError: CUDA out of memory. " \
            "Tried to allocate 96.00 MiB" in failed.reason
        assert (out / "runs.partial.jsonl").is_file() and "the same command trains only the missing" in r.output
        # a different sweep into that folder is refused before any training
        r = runner.invoke(app, [*cmd[:6], "9", *cmd[7:]])
        assert r.exit_code == 2 and "holds a partial sweep with other settings" in r.stderr, r.output
        register_stack("flaky", lambda d: build_stack("lstm", d))  # the cause is gone: rerun the same command
        r = runner.invoke(app, [*cmd, "--tf32", "on"])  # under another precision: every run records its own
        assert r.exit_code == 0, r.output
        assert "resuming: 3 runs already done" in r.output
        second = load_results(out)
        assert [(x.stack, x.length) for x in second.runs] == [("lstm", 9), ("lstm", 13), ("flaky", 9), ("flaky", 13)]
        assert second.runs[:3] == first.runs and not second.skipped  # kept, not retrained
        assert [x.tf32 for x in second.runs] == ["default"] * 3 + ["on"] and second.settings.tf32 == "on"
        assert not (out / "runs.partial.jsonl").exists()
    finally:
        named._STACKS.pop("flaky", None)


def test_a_run_that_fails_in_a_worker_process_fails_alone(tmp_path):
    from cortexmem.evals.stacks import build_stack, register_stack
    from cortexmem.stacks import named

    # registered in this process only: the spawned worker does not know it and its run raises there
    register_stack("parent_only", lambda d: build_stack("lstm", d))
    out = tmp_path / "pool"
    try:
        r = runner.invoke(app, ["eval", "--task", "majority", "--stack", "lstm,parent_only", "--lengths", "9",
                                "--workers", "2", "--out", str(out), *TINY])
    finally:
        named._STACKS.pop("parent_only", None)
    assert r.exit_code == 1, r.output
    res = load_results(out)
    assert [x.stack for x in res.runs] == ["lstm"]
    (failed,) = res.skipped
    assert failed.stack == "parent_only" and "majority@9 d=8 failed: ValueError" in failed.reason


def test_out_of_memory_from_a_worker_is_told_apart():
    """A worker's CUDA out-of-memory error arrives pickled; the pool retries such a run alone after it drains."""
    import pickle

    import torch

    from cortexmem.evals.runner import _out_of_memory

    oom = pickle.loads(pickle.dumps(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 768.00 MiB")))
    assert _out_of_memory(oom) and _out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not _out_of_memory(ValueError("unknown stack 'x'"))


def test_pool_workers_take_distinct_slots():
    """Each pool process takes the next slot (its GPU on a machine with several: slot mod device count)."""
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor

    from cortexmem.evals.runner import _worker_init, _worker_slot

    mp = multiprocessing.get_context("spawn")
    counter = mp.Value("i", 0)
    with ProcessPoolExecutor(2, mp_context=mp, initializer=_worker_init, initargs=(1, counter)) as pool:
        list(pool.map(time.sleep, [0.5, 0.5]))  # submitted together: neither process is idle, so both start
        slots = {f.result() for f in [pool.submit(_worker_slot) for _ in range(4)]}
    assert counter.value == 2 and slots <= {0, 1}


def test_the_committed_h100_journal_resumes_under_the_zoology_preset(tmp_path):
    """The partial H100 sweep (fp32, before the preset turned TF32 on) is resumed, not refused, by the preset."""
    import shutil

    from cortexmem.evals.cli import _settings
    from cortexmem.evals.journal import JOURNAL, RunJournal

    src = Path(__file__).resolve().parents[2] / "docs" / "figures" / "zoology_h100_partial" / JOURNAL
    shutil.copy(src, tmp_path / JOURNAL)
    kw = dict.fromkeys(("task", "stack", "epochs", "batch_size", "lr", "lengths", "mqar_slices", "chunk_size",
                        "widths", "train_size", "test_size"))
    settings, _ = _settings(**kw, weight_decay=0.01, seed=0, grad_clip=1.0, device="cuda", preset="zoology")
    assert settings.tf32 == "on"
    done = RunJournal(tmp_path, settings).load()
    assert len(done) == len(src.read_text().splitlines()) - 1 and {r.tf32 for r in done.values()} == {"default"}
    other = settings.model_copy(update={"lr": 3e-3})
    with pytest.raises(ValueError, match="holds a partial sweep with other settings"):
        RunJournal(tmp_path, other).load()


def test_the_mqar_summary_marks_tf32_runs_when_a_sweep_mixes_them(settings):
    from cortexmem.evals.report import TF32_MARK, mqar_summary_markdown

    cfg = settings(tasks=["mqar"], stacks=["lstm", "conv"])
    runs = [run_one(s, make_task("mqar", 16, pairs=2), cfg, DistContext()) for s in cfg.stacks]
    res = EvalResults(created="2026-01-01T00:00:00+00:00", cortexmem_version="0.1.0", torch_version="x",
                      device="cpu", world_size=1, wall_time_s=1.0, settings=cfg, runs=runs)
    assert TF32_MARK not in mqar_summary_markdown(res)
    first = res.runs[0].model_copy(update={"tf32": "on"})
    mixed = mqar_summary_markdown(res.model_copy(update={"runs": [first, *res.runs[1:]]}))
    assert mixed.count(TF32_MARK) == 2 and mixed.splitlines()[2].count(TF32_MARK) == 1
    assert "trained with TF32 matmuls" in mixed
