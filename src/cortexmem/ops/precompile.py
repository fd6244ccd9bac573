"""Cold first call: compile every Triton kernel a call needs at once, in parallel processes, before running it.

A fresh process compiles each Triton kernel the first time it is launched, one after another; a compile holds
the GIL for most of its second or two, so threads do not overlap them. On the first CUDA call of a top-level
module, :func:`precompile` runs that call once "dry" in this thread: every kernel launch made through
:func:`launch` becomes a compile request instead (Triton's ``AsyncCompileMode`` with ``warmup``), autograd
Functions also request their backward kernels (:func:`dry_run_active`), and nothing is launched (outputs hold
garbage and are thrown away). Each request is forked at once to a child process that compiles it into Triton's
on-disk cache while the dry pass goes on; the parent then loads every kernel from that cache and builds its
launcher on worker threads, and the real call finds them all ready. Other threads launch normally throughout;
any failure falls back to compiling on first launch as before. ``CORTEX_PRECOMPILE=0`` turns it off.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import torch

from .registry import triton_available, triton_disabled

log = logging.getLogger("cortexmem.precompile")

_OWNER: int | None = None  # the thread running a dry pass
_CHILD_TIMEOUT_S = 120.0  # no kernel of ours takes a tenth of this; a child stuck longer is stopped


def dry_run_active() -> bool:
    """Whether this thread is in a dry pass (launches become compile requests)."""
    if torch.compiler.is_compiling():
        return False
    return _OWNER is not None and _OWNER == threading.get_ident()


def launch(kernel: Any, grid: tuple, *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)``, or during this thread's dry pass a compile request without a launch."""
    if dry_run_active():
        kernel.warmup(*args, grid=grid, **kwargs)
    else:
        kernel[grid](*args, **kwargs)


def enabled(device: torch.device) -> bool:
    """Whether a first call on ``device`` should precompile (CUDA, Triton usable, Linux fork, not tracing)."""
    if torch.compiler.is_compiling() or device.type != "cuda" or os.environ.get("CORTEX_PRECOMPILE", "1") in ("0", ""):
        return False
    if not triton_available() or triton_disabled() or not hasattr(os, "fork") or _OWNER is not None:
        return False
    if torch.cuda.is_current_stream_capturing():
        return False
    from triton.runtime import _async_compile

    return _async_compile.active_mode.get() is None


class _ForkExecutor(Executor):
    """Runs each compile in a forked child (filling the disk cache), then loads it here on a worker thread."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.jobs: list[tuple[int, Callable[[], Any], Future]] = []

    def submit(self, fn: Callable[[], Any], /, *args: Any, **kwargs: Any) -> Future:
        # fork at once, so the child compiles while the dry pass goes on; no thread of ours runs yet (they start
        # in start_all), so the child cannot inherit a lock held mid-compile
        job = functools.partial(fn, *args, **kwargs)
        with warnings.catch_warnings():
            # Python warns that a child of a threaded process may deadlock: ours only compiles (no CUDA, no torch
            # threads) and is stopped after _CHILD_TIMEOUT_S, the kernel then compiled here
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: compile into the on-disk cache and leave without running any cleanup
            # no garbage collection here: freeing an inherited CUDA tensor calls into a CUDA context the child
            # cannot use, and the C++ error aborts the child (seen on an H200 as "CUDA error: initialization error")
            gc.disable()
            code = 1
            try:
                job()
                code = 0
            finally:
                os._exit(code)
        future: Future = Future()
        self.jobs.append((pid, job, future))
        return future

    def start_all(self) -> None:
        for pid, job, future in self.jobs:
            threading.Thread(target=self._finish, args=(pid, job, future), daemon=True).start()

    def _finish(self, pid: int, fn: Callable[[], Any], future: Future) -> None:
        deadline = time.monotonic() + _CHILD_TIMEOUT_S
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:  # a stuck child: stop it and compile here instead
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.005)
        try:
            torch.cuda.set_device(self.device)  # the kernel's module loads into this device's context
            kernel = fn()  # a disk-cache hit when the child succeeded, else the compile itself
            init = getattr(kernel, "_init_handles", None)
            if init is not None:
                init()  # load the binary and build the launcher here, in parallel with the other kernels
            future.set_result(kernel)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread, which ignores it
            future.set_exception(e)


def precompile(dry_call: Callable[[], Any], device: torch.device) -> int:
    """Run ``dry_call`` as a dry pass and compile every kernel it asked for in parallel; returns their number."""
    global _OWNER
    from triton.runtime._async_compile import AsyncCompileMode

    executor = _ForkExecutor(device)
    with AsyncCompileMode(executor, ignore_errors=True):
        _OWNER = threading.get_ident()
        try:
            with torch.random.fork_rng(devices=[device]):  # the real call draws the same random numbers
                dry_call()
        except Exception as e:  # noqa: BLE001 - garbage inputs may upset an op; the real call still runs
            log.debug("dry pass stopped early: %s", e)
        finally:
            _OWNER = None
        executor.start_all()
    log.debug("precompiled %d Triton kernels in parallel", len(executor.jobs))
    return len(executor.jobs)


def first_call(dry_call: Callable[[], Any], device: torch.device) -> bool:
    """The first-call hook of :mod:`cortexmem.core.module`: precompile when :func:`enabled` (True), else False."""
    if not enabled(device):
        return False
    precompile(dry_call, device)
    return True


def _install() -> None:
    from ..core import module

    module.FIRST_CALL = first_call


_install()
