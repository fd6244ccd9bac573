"""``cortex``: the command-line entry point. Each use adds its own sub-command group here."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from . import clikit as click
from .clikit import LOG_LEVELS, USER_ERRORS, check_output_dir, check_output_file, log_level_callback, report

#: sub-commands imported only when used, so ``cortex --help`` does not import torch:
#: name -> (module, attribute, one-line help)
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "lm": ("cortexmem.lm.cli", "app", "Small LM with STM -> LTM -> Archive memory that learns while it runs."),
    "rl": ("cortexmem.rl.cli", "app", "Reinforcement learning with cortexmem stacks (recurrent PPO)."),
    "llm": ("cortexmem.llm.cli", "app", "Memory sidecar for frozen Hugging Face causal LMs."),
    "eval": ("cortexmem.evals.cli", "eval_command", "Train stacks on synthetic memory tasks and report."),
}


def _log_level_option() -> click.Parameter:
    """The ``--log-level`` option every sub-command gets (typer's own option class, so help lists it)."""
    probe = typer.Typer()

    @probe.command()
    def _probe(log_level: str = typer.Option("INFO", "--log-level", help=f"logging detail: {', '.join(LOG_LEVELS)}",
                                             show_default=True)) -> None:
        """probe"""

    opt = typer.main.get_command(probe).params[0]
    opt.expose_value = False
    opt.is_eager = True
    opt.callback = log_level_callback
    return opt


def _with_log_level(cmd: click.Command) -> click.Command:
    if isinstance(getattr(cmd, "commands", None), dict):  # a group
        for sub in cmd.commands.values():
            _with_log_level(sub)
    elif not any(p.name == "log_level" for p in cmd.params):
        cmd.params.append(_log_level_option())
    return cmd


class _LazyCommand(TyperCommand):
    """Stands in for a sub-command in ``cortex --help``; the real one is imported when it runs."""

    def __init__(self, name: str, module: str, attr: str, help: str) -> None:
        super().__init__(name, help=help, short_help=help)
        self.module, self.attr = module, attr
        self._real: click.Command | None = None

    def real(self) -> click.Command:
        if self._real is None:
            obj = getattr(importlib.import_module(self.module), self.attr)
            if not isinstance(obj, typer.Typer):
                one = typer.Typer(add_completion=False)
                one.command(self.name)(obj)
                obj = one
            self._real = _with_log_level(typer.main.get_command(obj))
            self._real.name = self.name
        return self._real

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        return self.real().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        return self.real().invoke(ctx)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return self.real().get_params(ctx)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list:
        return self.real().shell_complete(ctx, incomplete)


class CortexGroup(TyperGroup):
    """The root group: lazy sub-commands, ``--log-level`` everywhere, and one error style (see ``clikit``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *LAZY_COMMANDS]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            return _LazyCommand(name, *LAZY_COMMANDS[name])
        cmd = super().get_command(ctx, name)
        return None if cmd is None else _with_log_level(cmd)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Usage errors (bad flags or values) end here as ``error: <one line>``, exit 2; runtime errors propagate
        to :func:`main` (so an embedding caller, or a test runner, still sees the exception itself)."""
        try:
            rv = super().main(args, prog_name or "cortex", complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except (click.ClickException, click.Abort) as err:
            code = report(err)
        if not standalone_mode:
            return code
        sys.exit(code)


app = typer.Typer(cls=CortexGroup, help="cortex-memory: recurrent memory that updates in constant time.",
                  no_args_is_help=True)


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
    from cortexmem.ops.registry import describe_op, list_backends

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
    from cortexmem.tools.doctor import rows_as_dicts, run_doctor, summary
    from cortexmem.utils.io import atomic_write_json

    check_output_file(json_out, "--json")
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
    """A bad argument of ``cortex <command>``: ``error: <message>`` on stderr, exit code 2 (see ``clikit``)."""
    click.usage_error(message)


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

    from cortexmem.tools import bench as tb
    from cortexmem.tools.bench_goals import evaluate_goals, goals_as_dicts
    from cortexmem.tools.bench_goals import summary as goals_summary
    from cortexmem.utils.io import atomic_write_json

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
    check_output_dir(out, "--out")
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
    from cortexmem.tools.bench_report import render, update_doc
    from cortexmem.utils.io import read_json

    try:
        if doc:
            update_doc(results, doc)
        else:
            print(render(read_json(results, "bench results file"), results), end="")
    except (OSError, ValueError, KeyError) as e:
        _usage_error("bench-report", f"{type(e).__name__}: {e}" if isinstance(e, KeyError | OSError) else str(e))


def main(argv: list[str] | None = None) -> None:
    """``cortex``: every failure ends with ``error: <one line>`` on stderr, exit 2 (usage) or 1 (runtime), no
    traceback (``CORTEX_DEBUG=1`` shows it)."""
    try:
        app(args=argv)
    except KeyboardInterrupt:
        report(click.Abort())
        raise SystemExit(130) from None
    except USER_ERRORS as err:
        if os.environ.get("CORTEX_DEBUG"):
            raise
        raise SystemExit(report(err)) from None


if __name__ == "__main__":
    main()
