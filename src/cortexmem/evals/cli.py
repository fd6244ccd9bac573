"""``cortex eval`` / ``python -m cortexmem.evals``: train stacks on the synthetic tasks and report."""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.logging import RichHandler

from ..runtime.precision import TF32_MODES
from .journal import FAILED_MARK, RunJournal
from .presets import (
    DEFAULT_LR,
    DEFAULT_TRAINING,
    PRESET_FLAGS,
    PRESETS,
    QUICK_PRESETS,
    TASK_OPTIONS,
    TASK_TRAINING,
    Preset,
)
from .report import compare_table, load_results, merge_results, mqar_summary_table, results_table, write_results
from .runner import run_suite
from .schema import EvalSettings, SkippedStack
from .stacks import DEFAULT_D_HIDDEN, QUICK_STACKS, available_stacks, list_stacks, stack_status
from .tasks import MQAR_SLICES, TASKS, make_task

log = logging.getLogger("cortexmem.evals")


class UsageError(Exception):
    """A bad argument: reported as one line, exit code 2."""


def _fail(msg: str) -> None:
    from ..clikit import usage_error

    usage_error(msg)


def _names(value: str | None, valid: list[str], what: str) -> list[str] | None:
    if value is None:
        return None
    if value == "all":
        return list(valid)
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise UsageError(f"unknown {what} {bad[0] if bad else value!r}; valid: {', '.join(valid)}, all")
    return names


def _ints(value: str | None, what: str) -> list[int] | None:
    if value is None:
        return None
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers > 0, got {value!r}") from None
    if not out or any(v <= 0 for v in out):
        raise UsageError(f"{what} must be comma-separated integers > 0, got {value!r}")
    return out


def _slices(value: str | None) -> list[tuple[int, int]] | None:
    if value is None:
        return None
    if value == "zoology":
        return list(MQAR_SLICES)
    try:
        out = [(int(a), int(b)) for a, b in (s.split(":") for s in value.split(","))]
    except ValueError:
        raise UsageError(f"--mqar-slices must be 'zoology' or L:PAIRS[,L:PAIRS...], got {value!r}") from None
    if any(a <= 0 or b <= 0 for a, b in out):
        raise UsageError(f"--mqar-slices values must be > 0, got {value!r}")
    return out


def eval_command(
    task: str = typer.Option(None, help=f"Task, comma list or 'all' ({', '.join(TASKS)}).", show_default="all"),
    stack: str = typer.Option(None, help="Stack name, comma list, or 'all'.", show_default="the quick set"),
    epochs: int = typer.Option(None, help="Passes over the training split.", show_default="6; mqar, needle: 4"),
    batch_size: int = typer.Option(None, help="Sequences per step (per process under torchrun).",
                                   show_default="32; needle: 16"),
    lr: float = typer.Option(None, help="AdamW peak learning rate (warmup, then cosine to 10%).",
                             show_default="3e-3; --preset zoology: 1e-3"),
    weight_decay: float = typer.Option(0.01),
    seed: int = typer.Option(0, help="Seed of data generation and model init."),
    lengths: str = typer.Option(None, help="Comma-separated lengths.", show_default="each task's short one"),
    mqar_slices: str = typer.Option(None, help="MQAR (length:pairs) slices, e.g. 64:4,128:8, or 'zoology'.",
                                    show_default="none"),
    chunk_size: int = typer.Option(None, help="Truncated BPTT: chunks of N steps, state detached.",
                                   show_default="off: full BPTT"),
    d_hidden: str = typer.Option(None, help="Stack width, or a comma list of widths (one run each).",
                                 show_default="32"),
    train_size: int = typer.Option(None, help="Training sequences per task.",
                                   show_default="1024; mqar: 8192, needle: 4096"),
    test_size: int = typer.Option(None, help="Held-out test sequences per task.", show_default="256"),
    grad_clip: float = typer.Option(1.0),
    target_accuracy: float = typer.Option(None, help="Stop a run after the first epoch whose test accuracy reaches "
                                          "this.", show_default="off; --preset zoology: 0.99"),
    tf32: str = typer.Option(None, help="fp32 matmul/cuDNN precision on CUDA: default (PyTorch's), on (TF32) or "
                             "off; recorded on every run.", show_default="default; --preset zoology: on"),
    preset: str = typer.Option(None, help=f"A named sweep: {', '.join(PRESETS)} (sets task, slices and widths).",
                               show_default="none"),
    quick: bool = typer.Option(False, "--quick", help="With --preset: its CPU smoke (tiny sizes).", show_default="off"),
    workers: int = typer.Option(1, help="Runs trained at once, one process each, sharing the device."),
    device: str = typer.Option("auto", help="cpu | cuda | auto."),
    threads: int = typer.Option(1, help="CPU threads per process (0: torch's default)."),
    out: Path = typer.Option(None, help="Output directory.", show_default="runs/<timestamp>/"),
    plots: bool = typer.Option(True, help="Write PNG plots (needs matplotlib: the 'plot' extra)."),
    compare: tuple[Path, Path] | None = typer.Option(None, help="Compare two run dirs: --compare A B.",
                                                     show_default="off"),
    merge: list[Path] = typer.Option(None, help="Merge run dirs of one sweep split by --stack: --merge A --merge B "
                                                "--out C (the first one's settings, every run).", show_default="off"),
    list_: bool = typer.Option(False, "--list", help="List stacks and tasks with availability, then exit.",
                               show_default=True),
    log_level: str = typer.Option("INFO", help="DEBUG | INFO | WARNING | ERROR."),
) -> None:
    """Train stacks on synthetic memory tasks; no arguments: the quick suite (a few stacks, all tasks)."""
    # a wide table when piped (rich would wrap it at 80 columns)
    console = Console(width=None if sys.stdout.isatty() else 150)
    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        _fail(f"unknown --log-level {log_level!r}; valid: DEBUG, INFO, WARNING, ERROR")
    handler = RichHandler(console=Console(stderr=True))
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler])
    if device not in ("cpu", "cuda", "auto"):
        _fail(f"unknown --device {device!r}; valid: cpu, cuda, auto")
    if compare is not None:
        try:
            a, b = load_results(compare[0]), load_results(compare[1])
        except ValueError as e:
            _fail(str(e))
        console.print(compare_table(a, b, str(compare[0]), str(compare[1])))
        return
    if merge:
        if out is None:
            _fail("--merge needs --out DIR for the merged results")
        try:
            merged = merge_results([load_results(p) for p in merge])
        except ValueError as e:
            _fail(str(e))
        console.print(mqar_summary_table(merged) if any(r.task == "mqar" for r in merged.runs)
                      else results_table(merged))
        paths = write_results(merged, out, plots=plots)
        console.print(f"wrote {', '.join(p.name for p in paths)} to {out}/")
        return
    try:
        widths = _ints(d_hidden, "--d-hidden")
        if list_:
            _list_stacks(console, widths[0] if widths else DEFAULT_D_HIDDEN)
            return
        settings, notes = _settings(task=task, stack=stack, epochs=epochs, batch_size=batch_size, lr=lr,
                                    weight_decay=weight_decay, seed=seed, lengths=lengths, mqar_slices=mqar_slices,
                                    chunk_size=chunk_size, widths=widths, train_size=train_size,
                                    test_size=test_size, grad_clip=grad_clip, device=device, preset=preset,
                                    quick=quick, target_accuracy=target_accuracy, tf32=tf32)
        if workers < 1:
            raise UsageError(f"--workers must be an integer >= 1, got {workers}")
        if workers > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("--workers runs several trainings in one process tree; under torchrun use one")
    except UsageError as e:
        _fail(str(e))
    all_widths = settings.widths or [settings.d_hidden]
    if settings.quick or settings.preset or stack == "all":
        missing = {}
        for d in all_widths:
            missing.update({s: f"{r} (d_hidden={d})" for s, r in available_stacks(d)[1].items() if s not in missing})
        skipped = [SkippedStack(stack=s, reason=missing[s]) for s in settings.stacks if s in missing]
        settings = settings.model_copy(update={"stacks": [s for s in settings.stacks if s not in missing]})
    else:
        skipped = []
        for s in settings.stacks:
            for d in all_widths:
                reason = stack_status(s, d)
                if reason is not None:
                    _fail(f"stack {s!r} is unavailable at d_hidden={d}: {reason}")
    if device == "cuda" and not torch.cuda.is_available():
        _fail("--device cuda requested but CUDA is not available; valid here: cpu, auto")
    if threads < 0:
        _fail(f"--threads must be >= 0, got {threads}")
    from ..clikit import check_output_dir

    check_output_dir(out, "--out")
    for note in notes:
        console.print(f"cortex eval: {note}")
    if threads:
        # The models are tiny: extra intra-op threads mostly add contention (use torchrun to scale out).
        torch.set_num_threads(threads)
    run_dir = out or Path("runs") / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    journal = RunJournal(run_dir, settings)
    try:
        done = journal.load()
    except ValueError as e:
        _fail(str(e))
    if done:
        console.print(f"cortex eval: resuming: {len(done)} runs already done in {journal.path}")
    results = run_suite(settings, skipped, console, workers=workers, threads=threads, journal=journal, done=done)
    if results is None:
        return
    if not results.runs:
        for s in results.skipped:
            console.print(f"[red]{s.stack}: {s.reason}[/]")
        console.print("[red]cortex eval: no run finished; nothing written[/]")
        raise typer.Exit(1)
    console.print(results_table(results))
    if any(r.task == "mqar" for r in results.runs):
        console.print(mqar_summary_table(results))
    for s in skipped:
        console.print(f"[yellow]skipped {s.stack}: {s.reason}[/]")
    paths = write_results(results, run_dir, plots=plots)
    console.print(f"wrote {', '.join(p.name for p in paths)} to {run_dir}/")
    failed = [s for s in results.skipped if FAILED_MARK in s.reason]
    if failed:
        console.print(f"[red]{len(failed)} runs failed (listed under 'skipped' in results.json); the finished runs "
                      f"are kept in {journal.path}: the same command trains only the missing ones[/]")
        raise typer.Exit(1)
    journal.remove()


def _list_stacks(console: Console, d_hidden: int) -> None:
    ok, missing = available_stacks(d_hidden)
    for name in list_stacks():
        state = "available" if name in ok else f"[dim]unavailable: {missing[name]}[/]"
        console.print(f"{name:14s} {state}")
    console.print("tasks: " + ", ".join(TASKS))
    console.print("presets: " + ", ".join(f"{p.name} ({p.description})" for p in PRESETS.values()))


def _preset(name: str, quick: bool, flags: dict[str, object]) -> Preset:
    if name not in PRESETS:
        raise UsageError(f"unknown --preset {name!r}; valid: {', '.join(PRESETS)}")
    clash = [f for f in PRESET_FLAGS if flags.get(f) is not None]
    if clash:
        raise UsageError(f"--preset {name} sets {', '.join(PRESET_FLAGS)} itself; drop {', '.join(clash)} "
                         f"(presets: {', '.join(PRESETS)})")
    return (QUICK_PRESETS if quick else PRESETS)[name]


def _settings(*, task, stack, epochs, batch_size, lr, weight_decay, seed, lengths, mqar_slices, chunk_size,
              widths, train_size, test_size, grad_clip, device, preset=None, quick=False, target_accuracy=None,
              tf32=None) -> tuple[EvalSettings, list[str]]:
    """The settings of one invocation and one-line notes on per-task defaults that flags replaced."""
    given = {"epochs": epochs, "batch_size": batch_size, "train_size": train_size, "test_size": test_size}
    notes: list[str] = []
    if quick and preset is None:
        raise UsageError(f"--quick shrinks a preset: use it with --preset ({', '.join(PRESETS)})")
    if preset is not None:
        pr = _preset(preset, quick, {"--task": task, "--lengths": lengths, "--mqar-slices": mqar_slices,
                                     "--d-hidden": widths, "--chunk-size": chunk_size})
        task, mqar_slices = "mqar", ",".join(f"{L}:{p}" for L, p in pr.slices)
        widths = list(pr.widths)
        stack = stack or ("all" if pr.stacks is None else ",".join(pr.stacks))
        lr = pr.lr if lr is None else lr
        target_accuracy = pr.target_accuracy if target_accuracy is None else target_accuracy
        tf32 = pr.tf32 if tf32 is None else tf32
        base = {"epochs": pr.epochs, "batch_size": pr.batch_size, "train_size": pr.train_size,
                "test_size": pr.test_size}
    else:
        base = DEFAULT_TRAINING
    values = {k: base[k] if v is None else v for k, v in given.items()}
    lr = DEFAULT_LR if lr is None else lr
    d_hidden = widths[0] if widths else DEFAULT_D_HIDDEN
    for flag, value, low in (("--epochs", values["epochs"], 1), ("--batch-size", values["batch_size"], 1),
                             ("--train-size", values["train_size"], 1), ("--test-size", values["test_size"], 1),
                             ("--chunk-size", 1 if chunk_size is None else chunk_size, 1)):
        if value < low:
            raise UsageError(f"{flag} must be an integer >= {low}, got {value}")
    for flag, value in (("--lr", lr), ("--grad-clip", grad_clip)):
        if not value > 0:
            raise UsageError(f"{flag} must be > 0, got {value}")
    if weight_decay < 0:
        raise UsageError(f"--weight-decay must be >= 0, got {weight_decay}")
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise UsageError(f"--target-accuracy must be in (0, 1], got {target_accuracy}")
    tf32 = "default" if tf32 is None else tf32
    if tf32 not in TF32_MODES:
        raise UsageError(f"--tf32 must be one of {', '.join(TF32_MODES)}, got {tf32!r}")
    tasks = _names(task, list(TASKS), "task") or list(TASKS)
    is_quick = preset is None and task is None and stack is None and lengths is None and mqar_slices is None
    stacks = _names(stack, list_stacks(), "stack") or list(QUICK_STACKS)
    lens = _ints(lengths, "--lengths")
    slices = _slices(mqar_slices)
    for L in lens or []:
        for t in tasks:
            if t == "mqar" and slices:
                continue
            try:
                spec = make_task(t, L)
            except ValueError as e:
                raise UsageError(f"--lengths {L} does not fit task {t}: {e}") from None
            if spec.length != L:  # mqar needs an even length, dyck an odd one: say so rather than change it
                raise UsageError(f"--lengths {L} does not fit task {t}: it needs a length like {spec.length}")
    for L, p in slices or []:
        try:
            make_task("mqar", L, pairs=p)
        except ValueError as e:
            raise UsageError(f"--mqar-slices {L}:{p}: {e}") from None
    # per-task training fills what no flag set; a flag applies to every task, and says whose default it replaced
    task_settings = {}
    if preset is None:
        for t in tasks:
            own = {k: v for k, v in TASK_TRAINING.get(t, {}).items() if given[k] is None}
            if own:
                task_settings[t] = own
        for k, v in given.items():
            replaced = [f"{t} ({TASK_TRAINING[t][k]})" for t in tasks if k in TASK_TRAINING.get(t, {})
                        and TASK_TRAINING[t][k] != v and v is not None]
            if replaced:
                notes.append(f"--{k.replace('_', '-')} {v} replaces the per-task default of {', '.join(replaced)}")
    at_default_length = lens is None and (slices is None or "mqar" not in tasks)
    task_options = {t: dict(o) for t, o in TASK_OPTIONS.items() if t in tasks and at_default_length}
    if "mqar" in tasks and not at_default_length and preset is None:
        notes.append(f"mqar away from its default length uses the vocabulary of each length (the smallest power of "
                     f"two above it, >= 128), not {TASK_OPTIONS['mqar']['vocab_size']}")
    return EvalSettings(tasks=tasks, stacks=stacks, lengths=lens, mqar_slices=slices, epochs=values["epochs"],
                        batch_size=values["batch_size"], lr=lr, weight_decay=weight_decay, seed=seed,
                        d_hidden=d_hidden, widths=widths if widths and len(widths) > 1 else None,
                        train_size=values["train_size"], test_size=values["test_size"], chunk_size=chunk_size,
                        grad_clip=grad_clip, target_accuracy=target_accuracy, device=device, tf32=tf32,
                        quick=is_quick or quick, preset=preset,
                        task_settings=task_settings, task_options=task_options), notes
