"""Running a planned sweep of ``cortex eval``: every (stack, task, length, options, width) in order or in a pool
of spawned processes sharing the device, finished runs journaled, a failed run failing alone."""

from __future__ import annotations

import gc
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from ..utils.progress import make_progress
from .ddp import DistContext, init_distributed, resolve_device, shutdown
from .journal import RunJournal, failure_line, plan_key
from .schema import EvalResults, EvalSettings, RunResult, SkippedStack
from .tasks import make_task
from .train import run_one


def plan_runs(settings: EvalSettings) -> list[tuple[str, str, int | None, dict, int]]:
    """Every (stack, task, length, task options, d_hidden) to train, in order."""
    plan = []
    for stack in settings.stacks:
        for d in settings.widths or [settings.d_hidden]:
            for task in settings.tasks:
                extra = settings.task_options.get(task, {})
                if task == "mqar" and settings.mqar_slices:
                    plan += [(stack, task, L, {**extra, "pairs": p}, d) for L, p in settings.mqar_slices]
                else:
                    plan += [(stack, task, L, dict(extra), d) for L in (settings.lengths or [None])]
    return plan


def run_suite(settings: EvalSettings, skipped: list[SkippedStack], console: Console, workers: int = 1,
              threads: int = 1, journal: RunJournal | None = None,
              done: dict[str, RunResult] | None = None) -> EvalResults | None:
    """Train every planned run (``workers`` at a time); the results on rank 0, None on the other ranks.

    Runs in ``done`` (by plan key, from ``journal``) are not trained again; each finished run is added to
    ``journal``. A run that raises is listed in ``skipped`` with its error and the others go on (under torchrun,
    where every rank trains the same run, the error stops the sweep)."""
    import cortexmem

    ctx = init_distributed(settings.device)
    start = time.perf_counter()
    plan = plan_runs(settings)
    done = done or {}
    runs: list[RunResult | None] = [done.get(plan_key(entry)) for entry in plan]
    failures: dict[int, str] = {}
    journal = journal if ctx.is_main else None

    def finished(i: int, run: RunResult) -> None:
        runs[i] = run
        if journal is not None:
            journal.add(plan[i], run)

    try:
        with make_progress(TextColumn("{task.description:40s}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console,
                           disable=not ctx.is_main) as progress:
            if workers > 1:
                _run_pool(settings, plan, runs, progress, workers, threads, finished, failures)
            for i, (stack, task, length, opts, d) in enumerate(plan):
                if runs[i] is not None or i in failures:
                    continue
                spec = make_task(task, length, **opts)
                label = _label(stack, spec.name, spec.length, d)
                bar = progress.add_task(label, total=None, info="")
                try:
                    finished(i, run_one(stack, spec, _run_settings(settings, task, d), ctx,
                                        on_step=lambda n, total, bar=bar: progress.update(bar, completed=n,
                                                                                          total=total)))
                except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
                    if ctx.world_size > 1:
                        raise
                    failures[i] = failure_line(label, e)
                    progress.update(bar, info="[red]failed[/]")
                    continue
                progress.update(bar, info=f"acc {runs[i].test_accuracy:.3f}")
        wall = time.perf_counter() - start
    finally:
        world = ctx.world_size
        is_main = ctx.is_main
        shutdown(ctx)
    if not is_main:
        return None
    for i in sorted(failures):
        console.print(f"[red]{failures[i]}[/]")
    failed = [SkippedStack(stack=plan[i][0], reason=failures[i]) for i in sorted(failures)]
    return EvalResults(
        created=datetime.now(UTC).isoformat(timespec="seconds"), cortexmem_version=cortexmem.__version__,
        torch_version=torch.__version__, device=str(ctx.device), world_size=world, wall_time_s=wall,
        settings=settings, runs=[r for r in runs if r is not None], skipped=[*skipped, *failed],
    )


def _label(stack: str, task: str, length: int, d: int) -> str:
    return f"{stack} / {task}@{length} d={d}"


def _run_settings(settings: EvalSettings, task: str, d: int) -> EvalSettings:
    return settings.for_task(task).model_copy(update={"d_hidden": d})


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e)


def _run_pool(settings: EvalSettings, plan: list, runs: list, progress: Any, workers: int, threads: int,
              finished: Any, failures: dict[int, str]) -> None:
    """Train the runs of ``plan`` not yet in ``runs`` in ``workers`` spawned processes (on CUDA spread over the
    visible GPUs, worker i on GPU i mod count); each result goes to ``finished(i, run)``, each error (one line) to
    ``failures[i]``, except running out of device memory: such a run is left for the caller's loop, which trains
    it alone once the pool has finished."""
    mp = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=mp, initializer=_worker_init, initargs=(threads, mp.Value("i", 0)))
    with pool:
        futures = {}
        for i, (stack, task, length, opts, d) in enumerate(plan):
            if runs[i] is not None:
                continue
            spec = make_task(task, length, **opts)
            label = _label(stack, spec.name, spec.length, d)
            bar = progress.add_task(label, total=None, info="queued")
            payload = _run_settings(settings, task, d).model_dump_json()
            futures[pool.submit(_worker_run, stack, task, length, opts, payload)] = (i, bar, label)
        for fut in as_completed(futures):
            i, bar, label = futures[fut]
            try:
                run = RunResult.model_validate_json(fut.result())
            except Exception as e:  # noqa: BLE001 - a worker's error fails its run only
                if _out_of_memory(e):
                    # memory the other workers held: the run is trained again alone after the pool
                    progress.update(bar, total=None, info="out of memory beside other runs: retried alone")
                    continue
                failures[i] = failure_line(label, e)
                progress.update(bar, total=1, completed=0, info="[red]failed[/]")
                continue
            finished(i, run)
            progress.update(bar, total=1, completed=1, info=f"acc {run.test_accuracy:.3f} ({run.train_time_s:.0f}s)")


#: this pool process's number (0, 1, ... in start order): its GPU is ``cuda:(slot % device_count)``
_SLOT = 0


def _worker_init(threads: int, counter: Any) -> None:
    global _SLOT
    with counter.get_lock():
        _SLOT = counter.value
        counter.value += 1
    if threads:
        torch.set_num_threads(threads)


def _worker_slot() -> int:
    return _SLOT


def _worker_run(stack: str, task: str, length: int | None, opts: dict, settings_json: str) -> str:
    """One run in a pool process (a fresh interpreter: only stacks registered on import are known)."""
    settings = EvalSettings.model_validate_json(settings_json)
    # on a machine with several GPUs the workers spread over them (worker i on GPU i mod count)
    ctx = DistContext(device=resolve_device(settings.device, _SLOT))
    try:
        return run_one(stack, make_task(task, length, **opts), settings, ctx).model_dump_json()
    finally:
        # this process trains further runs: give its cached blocks back, or the pool's cached memory adds up
        # until every later run on the GPU runs out (seen with 12 workers on an 80 GB H100)
        gc.collect()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
