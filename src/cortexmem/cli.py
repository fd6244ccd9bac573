"""``cortex``: the command-line entry point. Each use adds its own sub-command group here."""

from __future__ import annotations

import os

import typer

app = typer.Typer(help="cortex-memory: recurrent memory that updates in constant time.", no_args_is_help=True)


@app.callback()
def _root() -> None:
    """cortex-memory command line."""


@app.command()
def info() -> None:
    """Version, torch, CUDA/Triton availability, and the registered cells and blocks."""
    import importlib.util

    import torch
    from rich.console import Console
    from rich.table import Table

    import cortexmem

    table = Table(title="cortex-memory", show_header=False)
    table.add_row("cortexmem", cortexmem.__version__)
    table.add_row("torch", torch.__version__)
    cuda = torch.cuda.is_available()
    table.add_row("CUDA", f"yes ({torch.cuda.get_device_name(0)})" if cuda else "no")
    table.add_row("Triton", "installed" if importlib.util.find_spec("triton") else "not installed")
    from cortexmem.core.backends import describe_op, list_backends

    for op in list_backends():
        table.add_row(f"op {op}", describe_op(op, "cuda" if cuda else "cpu"))
    table.add_row("cells", ", ".join(cortexmem.list_cells()))
    table.add_row("blocks", ", ".join(cortexmem.list_blocks()))
    Console().print(table)


@app.command()
def doctor(
    json_out: str = typer.Option(None, "--json", help="also write the table as JSON to this file"),
    ops: str = typer.Option(None, help="comma-separated ops to check (default: every op with a reference)"),
    imports: list[str] = typer.Option([], "--import", help="a module that registers more backends (repeatable)"),
    timeout: float = typer.Option(600.0, min=1, help="seconds one row may take, kernel compiles included"),
    jobs: int = typer.Option(1, min=1, help="worker processes at once"),
    isolate: bool = typer.Option(None, "--isolate/--shared-worker",
                                 help="one worker process per backend (default: when CUDA is checked)"),
) -> None:
    """Check every backend that can run here against its naive reference (outputs and gradients) in worker
    processes: a crash, a hang or a sticky CUDA error fails that backend's rows only. Exit 1 when a row fails."""
    from rich.console import Console
    from rich.table import Table

    import cortexmem  # noqa: F401 - registers every op
    from cortexmem.core.io import atomic_write_json
    from cortexmem.tools.doctor import rows_as_dicts, run_doctor, summary

    wanted = [o.strip() for o in ops.split(",") if o.strip()] if ops else None
    try:
        rows = run_doctor(ops=wanted, imports=imports, timeout_s=timeout, jobs=jobs, isolate=isolate)
    except (ValueError, ImportError) as e:
        _usage_error("doctor", str(e).splitlines()[0])
    table = Table(title="cortex doctor")
    for col in ("op", "backend", "device", "dtype", "status", "max err (out)", "max err (grad)", "detail"):
        table.add_column(col)
    fmt = lambda v: "" if v is None else f"{v:.2e}"  # noqa: E731
    for r in rows:
        table.add_row(r.op, r.backend, r.device, r.dtype, r.status, fmt(r.max_err_out), fmt(r.max_err_grad), r.detail)
    console = Console(width=200)
    console.print(table)
    console.print(summary(rows), highlight=False)
    if json_out:
        atomic_write_json(json_out, rows_as_dicts(rows))
    if any(r.status == "FAIL" for r in rows):
        raise typer.Exit(1)


def _usage_error(command: str, message: str) -> None:
    """A bad argument: one line on stderr, exit code 2."""
    import sys

    print(f"cortex {command}: error: {message}", file=sys.stderr)
    raise typer.Exit(2)


@app.command()
def bench(
    cells: str = typer.Option("lstm,conv,mlstm,slstm,axon,xl,agalite,gated_delta", help="comma-separated cell names"),
    batch: int = typer.Option(32, min=1), seq: int = typer.Option(256, min=1), d: int = typer.Option(256, min=1),
    layers: int = typer.Option(4, min=1), pattern: str = typer.Option("AXMS"),
    device: str = typer.Option("auto", help="auto|cpu|cuda"), repeats: int = typer.Option(10, min=1),
    out: str = typer.Option(None, help="directory for bench.json and bench.png"),
    tf32: str = typer.Option("default", help="fp32 matmul/cuDNN precision for every row: default (PyTorch's: "
                                             "matmuls fp32, cuDNN TF32), on (all TF32) or off (all fp32)"),
    step_compile: str = typer.Option("default", help="the stack's compiled CUDA-graph step: off, default or "
                                                     "max-autotune (inductor times Triton matmul templates: "
                                                     "minutes of compile)"),
    goals_only: bool = typer.Option(False, "--goals-only", help="measure only what the speed goals need"),
    first_call: bool = typer.Option(None, "--first-call/--no-first-call",
                                    help="time the stack's first call in a fresh process, empty Triton cache "
                                         "(default: on CUDA)"),
) -> None:
    """Forward+backward, step and first-call timings of our cells vs cuDNN LSTM, cortexcore, fla and SDPA; then
    each speed goal with its measured ratio, met or not (bench.json: rows, ratios, goals)."""
    from pathlib import Path

    import torch
    from rich.console import Console
    from rich.table import Table

    from cortexmem.core.io import atomic_write_json
    from cortexmem.tools import bench as tb
    from cortexmem.tools.bench_goals import evaluate_goals, goals_as_dicts
    from cortexmem.tools.bench_goals import summary as goals_summary

    try:
        torch.device("cpu" if device == "auto" else device)
    except RuntimeError:
        _usage_error("bench", f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if tf32 not in tb.TF32_MODES:
        _usage_error("bench", f"--tf32 must be one of {', '.join(tb.TF32_MODES)}, got {tf32!r}")
    if step_compile not in tb.STEP_COMPILE_MODES:
        _usage_error("bench", f"--step-compile must be one of {', '.join(tb.STEP_COMPILE_MODES)}, "
                              f"got {step_compile!r}")
    try:
        names = tb.check_cells([c.strip() for c in cells.split(",") if c.strip()])
    except ValueError as e:
        _usage_error("bench", str(e))
    with tb.tf32_mode(tf32) as precision:
        rows = tb.run_bench(names, batch=batch, seq=seq, d=d, layers=layers, pattern=pattern, device=device,
                            repeats=repeats, step_compile=step_compile, goals_only=goals_only, first_call=first_call)
    goals = evaluate_goals(rows, cells=names, batch=batch, seq=seq, d=d, layers=layers, pattern=pattern)
    console = Console(width=200)
    table = Table(title=f"cortex bench  B={batch} T={seq} d={d}  tf32 {tf32} ({precision})")
    for col in ("name", "fwd+bwd ms", "fwd+bwd (graph) ms",
                "step ms", "step (graph) ms", "step (compiled graph) ms", "first call s", "peak MB", "status"):
        table.add_column(col)
    fmt = lambda v, p=3: "" if v is None else f"{v:.{p}f}"  # noqa: E731
    for r in rows:
        status = r.status if not r.extra else f"{r.status} {r.extra}"
        table.add_row(r.name, fmt(r.fwd_bwd_ms), fmt(r.fwd_bwd_graph_ms), fmt(r.step_ms), fmt(r.step_graph_ms),
                      fmt(r.step_graph_compiled_ms), fmt(r.first_call_s, 2), fmt(r.peak_mem_mb, 1), status)
    console.print(table)
    for k, v in tb.ratios(rows).items():
        console.print(f"{k}: {v:.2f}x", highlight=False)
    gtable = Table(title="speed goals (ratio above 1: better than the goal)")
    for col in ("figure", "goal", "measured", "ratio", "status", "detail"):
        gtable.add_column(col)
    for g in goals:
        gtable.add_row(g.figure, g.goal, "" if g.measured is None else f"{g.measured:.3f} {g.unit}",
                       fmt(g.ratio, 2), g.status, g.detail)
    console.print(gtable)
    console.print(goals_summary(goals), highlight=False)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out) / "bench.json", {
            "meta": tb.run_metadata(device), "rows": tb.rows_as_dicts(rows), "ratios": tb.ratios(rows),
            "goals": goals_as_dicts(goals), "precision": {"tf32": tf32, **precision}, "step_compile": step_compile,
            "params": {"cells": names, "batch": batch, "seq": seq, "d": d, "layers": layers, "pattern": pattern,
                       "repeats": repeats, "goals_only": goals_only}})
        tb.plot(rows, Path(out) / "bench.png")


@app.command("bench-report")
def bench_report(
    results: str = typer.Argument(..., help="a bench.json written by cortex bench --out"),
    doc: str = typer.Option(None, help="rewrite the generated part of this markdown file (e.g. docs/gpu.md)"),
) -> None:
    """Markdown tables (goals, cells, stacks, gated delta; with date and GPU) from a cortex bench results file."""
    import json

    from cortexmem.tools.bench_report import render, update_doc

    try:
        if doc:
            update_doc(results, doc)
        else:
            print(render(json.loads(open(results).read()), results), end="")
    except (OSError, ValueError, KeyError) as e:
        _usage_error("bench-report", f"{type(e).__name__}: {e}" if isinstance(e, KeyError | OSError) else str(e))


from .lm.cli import app as _lm_app  # noqa: E402
from .rl.cli import app as rl_app  # noqa: E402

app.add_typer(_lm_app, name="lm")
app.add_typer(rl_app, name="rl")

from .llm.cli import app as _llm_app  # noqa: E402

app.add_typer(_llm_app, name="llm")

from .evals.cli import eval_command  # noqa: E402

app.command("eval")(eval_command)


USER_ERRORS = (ValueError, TypeError, OSError, KeyError)


def main() -> None:
    """``cortex``: bad input (``USER_ERRORS``) ends with a one-line message and exit code 1, not a traceback."""
    try:
        app()
    except USER_ERRORS as err:
        if os.environ.get("CORTEX_DEBUG"):
            raise
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
