"""Eval outputs: the rich results table, ``results.json`` / ``results.csv``, PNG plots, and run comparison."""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.table import Table

from ..utils.io import (
    CheckpointError,
    CheckpointNotFoundError,
    atomic_save_figure,
    atomic_write_text,
    read_json,
    validation_message,
)
from .schema import SCHEMA_VERSION, EvalResults, RunResult

log = logging.getLogger(__name__)

RESULTS_JSON, RESULTS_CSV, MQAR_SUMMARY = "results.json", "results.csv", "mqar_summary.md"
CSV_FIELDS = ["stack", "task", "length", "options", "d_hidden", "test_accuracy", "chance", "state_floats",
              "test_loss", "final_loss", "params", "train_time_s", "tokens_per_s", "step_seq_max_abs_err",
              "step_check", "chunk_size", "steps", "tf32"]


def _opts(run: RunResult) -> str:
    return " ".join(f"{k}={v:g}" for k, v in sorted(run.options.items()))


def _length(run: RunResult) -> str:
    return f"{run.length}/{int(run.options['pairs'])}" if run.task == "mqar" else str(run.length)


def _err(run: RunResult) -> str:
    if run.step_seq_max_abs_err is None:
        return "n/a"
    return f"{run.step_seq_max_abs_err:.1e}" + ("*" if run.step_check == "prefix" else "")


def results_table(results: EvalResults) -> Table:
    """The final table: one row per run."""
    t = Table(title=f"cortex eval ({results.device}, world {results.world_size}, {results.wall_time_s:.0f}s)",
              caption="chance: accuracy of a uniform guess among the answers; state: state floats per sequence"
                      " over all layers (transformer: KV cache at that length); step-vs-seq err: max"
                      " |logits(sequence) - logits(step loop)| on test data; * = prefix recompute (non-recurrent"
                      " model); mqar len = length/pairs")
    for col, just in [("stack", "left"), ("task", "left"), ("len", "right"), ("d", "right"),
                      ("test acc", "right"), ("chance", "right"), ("state", "right"), ("final loss", "right"),
                      ("params", "right"), ("train s", "right"), ("tokens/s", "right"),
                      ("step-vs-seq err", "right")]:
        t.add_column(col, justify=just)
    for r in results.runs:
        t.add_row(r.stack, r.task, _length(r), str(r.d_hidden), f"{r.test_accuracy:.3f}", f"{r.chance:.3f}",
                  f"{r.state_floats:,}", f"{r.final_loss:.3f}", f"{r.params:,}", f"{r.train_time_s:.1f}",
                  f"{r.tokens_per_s:,.0f}", _err(r))
    return t


def _mqar_grid(results: EvalResults) -> tuple[list[str], dict[tuple[str, int], dict[str, RunResult]]]:
    """MQAR slices ("L/pairs", in run order) and ``{(stack, d_hidden): {slice: run}}``."""
    runs = [r for r in results.runs if r.task == "mqar"]
    slices = list(dict.fromkeys(_length(r) for r in runs))
    grid: dict[tuple[str, int], dict[str, RunResult]] = {}
    for r in runs:
        grid.setdefault((r.stack, r.d_hidden), {})[_length(r)] = r
    return slices, grid


def mqar_summary_table(results: EvalResults) -> Table:
    """MQAR accuracy per (stack, width) and slice, with the state size that bought it."""
    slices, grid = _mqar_grid(results)
    chance = {_length(r): r.chance for r in results.runs if r.task == "mqar"}
    t = Table(title="MQAR: test accuracy (state floats per sequence)",
              caption="chance: " + ", ".join(f"{k} {v:.4f}" for k, v in chance.items()))
    for col in ["stack", "d", "params", *slices]:
        t.add_column(col, justify="left" if col == "stack" else "right")
    for (stack, d), row in grid.items():
        params = next(iter(row.values())).params
        t.add_row(stack, str(d), f"{params:,}", *(_cell(row.get(s)) for s in slices))
    return t


def mqar_summary_markdown(results: EvalResults) -> str:
    """:func:`mqar_summary_table` as a Markdown table (what docs quote)."""
    slices, grid = _mqar_grid(results)
    chance = {_length(r): r.chance for r in results.runs if r.task == "mqar"}
    mixed = len({r.tf32 for r in results.runs if r.task == "mqar"}) > 1
    lines = ["| stack | d | params | " + " | ".join(f"{s} (chance {chance[s]:.4f})" for s in slices) + " |",
             "|---|---|---|" + "---|" * len(slices)]
    for (stack, d), row in grid.items():
        params = next(iter(row.values())).params
        lines.append(f"| {stack} | {d} | {params:,} | " + " | ".join(_cell(row.get(s), mixed) for s in slices)
                     + " |")
    if mixed:
        lines.append(f"\n{TF32_MARK} trained with TF32 matmuls (`--tf32 on`); the others with fp32 matmuls "
                     "(`--tf32 default` or `off`).")
    return "\n".join(lines) + "\n"


#: marks, in a summary whose runs trained under different ``--tf32`` modes, the runs trained with TF32 on
TF32_MARK = "†"


def _cell(run: RunResult | None, mixed: bool = False) -> str:
    if run is None:
        return "-"
    mark = TF32_MARK if mixed and run.tf32 == "on" else ""
    return f"{run.test_accuracy:.3f}{mark} ({run.state_floats:.2g})"


def to_csv(results: EvalResults) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in results.runs:
        row = r.model_dump(include=set(CSV_FIELDS) - {"options"})
        w.writerow({**row, "options": _opts(r)})
    return buf.getvalue()


def write_results(results: EvalResults, out: Path, plots: bool = True) -> list[Path]:
    """Write ``results.json``, ``results.csv`` and (with matplotlib) the plots; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RESULTS_JSON, results.model_dump_json(indent=2) + "\n")
    atomic_write_text(out / RESULTS_CSV, to_csv(results))
    paths = [out / RESULTS_JSON, out / RESULTS_CSV]
    if any(r.task == "mqar" for r in results.runs):
        atomic_write_text(out / MQAR_SUMMARY, mqar_summary_markdown(results))
        paths.append(out / MQAR_SUMMARY)
    if plots:
        paths += write_plots(results, out)
    return paths


def load_results(path: str | Path) -> EvalResults:
    """Read ``results.json`` from a run directory (or the file itself) and validate it."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_JSON
    if not p.exists():
        raise CheckpointNotFoundError(f"no {RESULTS_JSON} at {p}")
    obj = read_json(p, "results file")
    try:
        version = obj.get("schema_version") if isinstance(obj, dict) else None
        if version is not None and version != SCHEMA_VERSION:
            raise CheckpointError(f"{p} has schema_version {version}; this cortexmem reads {SCHEMA_VERSION} (rerun "
                                  "the eval to compare it)")
        return EvalResults.model_validate(obj)
    except ValidationError as e:
        raise CheckpointError(f"{p} is not a valid results file: {validation_message(e)}") from None


def merge_results(parts: list[EvalResults]) -> EvalResults:
    """One results file from runs of the same sweep split over several invocations (``--stack`` subsets)."""
    first = parts[0]
    keys = [r.key for p in parts for r in p.runs]
    if len(set(keys)) != len(keys):
        raise ValueError("--merge: the same run (stack, task, length, options, width) appears twice")
    for p in parts[1:]:
        a, b = (x.settings.model_dump(exclude={"stacks"}) for x in (first, p))
        if a != b:
            diff = sorted(k for k in a if a[k] != b[k])
            raise ValueError(f"--merge: runs of different settings ({', '.join(diff)} differ)")
    runs = [r for p in parts for r in p.runs]
    stacks = list(dict.fromkeys(r.stack for r in runs))
    skipped = [s for p in parts for s in p.skipped if s.stack not in stacks]
    settings = first.settings.model_copy(update={"stacks": stacks})
    return first.model_copy(update={"runs": runs, "skipped": skipped, "settings": settings,
                                    "wall_time_s": sum(p.wall_time_s for p in parts)})


# --- plots --------------------------------------------------------------------------------------------------
def _save(fig, path: Path) -> Path:
    atomic_save_figure(fig, path, bbox_inches="tight")
    return path


def write_plots(results: EvalResults, out: Path) -> list[Path]:
    """``learning_curves.png``, ``accuracy_heatmap.png``, with ``--lengths`` ``accuracy_vs_length.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'cortex-memory[plot]'): plots skipped")
        return []
    runs = results.runs
    if not runs:
        return []
    tasks = list(dict.fromkeys(r.task for r in runs))
    stacks = list(dict.fromkeys(r.stack for r in runs))
    written = []

    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for r in runs:
            if r.task == task:
                ax.plot(r.curves.step, _smooth(r.curves.train_loss), label=f"{r.stack} L={r.length}", lw=1)
        _label(ax, task, "step", "train loss")
        ax.set_yscale("log")
    fig.tight_layout()
    written.append(_save(fig, out / "learning_curves.png"))
    plt.close(fig)

    acc = defaultdict(list)
    for r in runs:
        acc[(r.stack, r.task)].append(r.test_accuracy)
    mean = lambda v: sum(v) / len(v) if v else float("nan")
    grid = [[mean(acc[(s, t)]) for t in tasks] for s in stacks]
    fig, ax = plt.subplots(figsize=(1.4 * len(tasks) + 2, 0.5 * len(stacks) + 1.5))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    chance = {r.task: r.chance for r in runs}
    ax.set_xticks(range(len(tasks)), [f"{t}\n(chance {chance[t]:.2g})" for t in tasks], rotation=30, ha="right")
    ax.set_yticks(range(len(stacks)), stacks)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
    fig.colorbar(im, ax=ax, label="test accuracy (mean over lengths)")
    written.append(_save(fig, out / "accuracy_heatmap.png"))
    plt.close(fig)

    if results.settings.lengths or results.settings.mqar_slices:
        fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            for s in stacks:
                pts = sorted((r.length, r.test_accuracy) for r in runs if r.task == task and r.stack == s)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s)
            ax.axhline(max(r.chance for r in runs if r.task == task), color="gray", ls="--", lw=1, label="chance")
            ax.set_xscale("log", base=2)
            ax.set_ylim(-0.02, 1.02)
            _label(ax, task, "sequence length", "test accuracy")
        fig.tight_layout()
        written.append(_save(fig, out / "accuracy_vs_length.png"))
        plt.close(fig)
    if any(r.task == "mqar" for r in runs):
        written.append(_accuracy_vs_state(results, out, plt))
    return written


def _accuracy_vs_state(results: EvalResults, out: Path, plt) -> Path:
    """Zoology's figure: MQAR accuracy against state floats (log x), one line per stack, a panel per slice."""
    slices, grid = _mqar_grid(results)
    stacks = list(dict.fromkeys(stack for stack, _ in grid))
    fig, axes = plt.subplots(1, len(slices), figsize=(4.2 * len(slices), 3.6), squeeze=False, sharey=True)
    for ax, sl in zip(axes[0], slices, strict=True):
        for stack in stacks:
            pts = sorted((row[sl].state_floats, row[sl].test_accuracy)
                         for (s, _), row in grid.items() if s == stack and sl in row)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1, label=stack)
        chance = next(row[sl].chance for row in grid.values() if sl in row)
        ax.axhline(chance, color="gray", ls="--", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"MQAR {sl} (length/pairs)")
        ax.set_xlabel("state floats per sequence (all layers)")
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path = _save(fig, out / "accuracy_vs_state.png")
    plt.close(fig)
    return path


def _label(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6)


def _smooth(values: list[float], window: int = 10) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


# --- comparison ---------------------------------------------------------------------------------------------
def compare_table(a: EvalResults, b: EvalResults, name_a: str, name_b: str) -> Table:
    """Runs matched on (stack, task, length, options): accuracies, their difference, loss and speed."""
    bi = {r.key: r for r in b.runs}
    t = Table(title=f"{name_a} vs {name_b}")
    for col in ["stack", "task", "len", "acc A", "acc B", "Δ acc", "loss A", "loss B", "tok/s B÷A"]:
        t.add_column(col, justify="left" if col in ("stack", "task") else "right")
    seen = set()
    for ra in a.runs:
        rb = bi.get(ra.key)
        seen.add(ra.key)
        if rb is None:
            t.add_row(ra.stack, ra.task, str(ra.length), f"{ra.test_accuracy:.3f}", "-", "-",
                      f"{ra.final_loss:.3f}", "-", "-")
            continue
        d = rb.test_accuracy - ra.test_accuracy
        style = "green" if d > 0.005 else "red" if d < -0.005 else ""
        t.add_row(ra.stack, ra.task, str(ra.length), f"{ra.test_accuracy:.3f}", f"{rb.test_accuracy:.3f}",
                  f"[{style}]{d:+.3f}[/]" if style else f"{d:+.3f}", f"{ra.final_loss:.3f}",
                  f"{rb.final_loss:.3f}", f"{rb.tokens_per_s / max(ra.tokens_per_s, 1e-9):.2f}")
    for rb in b.runs:
        if rb.key not in seen:
            t.add_row(rb.stack, rb.task, str(rb.length), "-", f"{rb.test_accuracy:.3f}", "-", "-",
                      f"{rb.final_loss:.3f}", "-")
    return t
