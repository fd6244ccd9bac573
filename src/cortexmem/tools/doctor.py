"""``cortex doctor``: run every backend that can run here against the op's naive reference; print a table.

Rows are checked in worker processes, so a crash (a segfault, an abort), a hang or a sticky CUDA error (an illegal
memory access leaves the process's CUDA context unusable) is charged to the backend that caused it and cannot
poison the rows after it. When CUDA is checked, each backend has its own worker; a worker whose CUDA row failed is
replaced by a fresh one for its remaining rows. On CPU only, one worker checks the backends in turn (no state can
leak between them there) and is replaced after a crash.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import torch

from ..ops.registry import list_backends, references
from ..runtime.precision import tf32_mode

DTYPES = ("float32", "bfloat16")
STARTUP_TIMEOUT_S = 300.0
_MARK = "@@doctor "  # worker result lines start with it: a backend may print to stdout too


@dataclass
class DoctorRow:
    op: str
    backend: str
    device: str
    dtype: str
    status: str
    max_err_out: float | None = None
    max_err_grad: float | None = None
    detail: str = ""


def _flat(out) -> list[torch.Tensor]:
    return [t for t in (out if isinstance(out, tuple | list) else (out,)) if isinstance(t, torch.Tensor)]


def _run(fn, args, seed=7, forward_only=False):
    args = [a.detach().clone().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor) else a
            for a in args]
    if forward_only:
        with torch.no_grad():
            outs = _flat(fn(*args))
        return [o.double().cpu() for o in outs], []
    outs = _flat(fn(*args))
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.float() * torch.randn(o.shape, generator=g).to(o.device)).sum() for o in outs)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [o.detach().double().cpu() for o in outs], [None if gr is None else gr.double().cpu() for gr in grads]


def _fp64_cpu(a):
    """A reference input: a tensor on CPU, in fp64 if floating; anything else as it is."""
    if not isinstance(a, torch.Tensor):
        return a
    a = a.detach().cpu()
    return a.double() if a.is_floating_point() else a


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-12)).item()


def check_row(op: str, backend_name: str, device: str, dtype: str, ref_cache: dict | None = None) -> DoctorRow:
    """One row, in this process: the backend's outputs (and gradients) against the reference's, run in fp64 on CPU
    on the same inputs (the row's, upcast: a bf16 row is judged on its kernel's error, not on rounding its inputs).
    fp32 rows run with TF32 off (cuDNN takes TF32 by default), so fp32 means fp32."""
    backend = {b.name: b for b in list_backends()[op]}[backend_name]
    ref = references()[op]
    tdtype = getattr(torch, dtype)
    inputs = ref.make_inputs(torch.device(device), tdtype)
    cache = {} if ref_cache is None else ref_cache
    if (op, dtype) not in cache:
        cache[op, dtype] = _run(ref.fn, [_fp64_cpu(a) for a in inputs])
    ref_out, ref_grad = cache[op, dtype]
    row = DoctorRow(op, backend_name, device, dtype, "FAIL")
    tol = 1e-4 if tdtype == torch.float32 else 5e-2
    try:
        with tf32_mode("off"):
            out, grad = _run(backend.fn, inputs, forward_only=backend.forward_only)
    except Exception as e:  # noqa: BLE001 - the doctor reports every failure
        row.detail = f"{type(e).__name__}: {e}".replace("\n", " ")[:400]
        return row
    row.max_err_out = max(_rel_err(a, b) for a, b in zip(out, ref_out, strict=True))
    if not backend.forward_only:
        row.max_err_grad = max((_rel_err(a, b) for a, b in zip(grad, ref_grad, strict=True)
                                if a is not None and b is not None), default=0.0)
    worst = max(row.max_err_out, row.max_err_grad or 0.0)
    row.status = "pass" if worst <= tol else "FAIL"  # a NaN error is not <= tol: FAIL
    row.detail = f"relative RMS error, tolerance {tol:g}" + (" (forward only)" if backend.forward_only else "")
    return row


def _worker_main(task: dict) -> None:
    """Check ``task``'s rows in order, one result line each; stop after a CUDA row failed (its context may be lost)."""
    import faulthandler

    faulthandler.enable()  # a segfault leaves "Fatal Python error: ..." on stderr for the parent to quote
    from ..ops.registry import list_backends, references

    list_backends(), references()  # the built-in ops register on first lookup: part of the start, not of a row
    for module in task["imports"]:
        importlib.import_module(module)
    print(_MARK + json.dumps({"ready": True}), flush=True)
    cache: dict = {}
    for op, backend, device, dtype in task["rows"]:
        row = check_row(op, backend, device, dtype, cache)
        print(_MARK + json.dumps(asdict(row)), flush=True)
        if row.status == "FAIL" and torch.device(device).type == "cuda":  # the context may be corrupt
            print(_MARK + json.dumps({"restart": True}), flush=True)
            return


def _crash_detail(rc: int | None, stderr_tail: str, what: str) -> str:
    if rc is None:
        how = "timed out"
    elif rc < 0:
        try:
            how = f"crashed (killed by {signal.Signals(-rc).name})"
        except ValueError:
            how = f"crashed (signal {-rc})"
    else:
        how = f"crashed (exit code {rc})"
    tail = f"; stderr: {stderr_tail}" if stderr_tail else ""
    return f"{how} while checking {what}{tail}"[:400]


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
    except OSError:
        return ""
    fatal = [ln for ln in lines if ln.startswith("Fatal Python error")]
    return (fatal[-1] if fatal else lines[-1] if lines else "")[:200]


def _run_group(pending: list[tuple[str, str, str, str]], imports: list[str], timeout_s: float) -> list[DoctorRow]:
    """``(op, backend, device, dtype)`` rows in a worker process, replaced by a fresh one after a crash, a timeout
    (each fails the row it was on) or a failed CUDA row."""
    done: list[DoctorRow] = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), PYTHONUNBUFFERED="1")
    while pending:
        task = {"rows": pending, "imports": imports}
        with tempfile.NamedTemporaryFile("w+", prefix="cortex-doctor-", suffix=".err", delete=False) as err:
            err_path = err.name
        try:
            with open(err_path, "w") as err_f:
                proc = subprocess.Popen([sys.executable, "-m", "cortexmem.tools.doctor", json.dumps(task)],
                                        stdout=subprocess.PIPE, stderr=err_f, text=True, env=env)
            lines: queue.Queue[str | None] = queue.Queue()

            def pump(proc=proc, lines=lines):
                for line in proc.stdout:
                    if line.startswith(_MARK):
                        lines.put(line[len(_MARK):])
                lines.put(None)

            threading.Thread(target=pump, daemon=True).start()
            got, restart, timed_out, ready = 0, False, False, False
            while True:
                try:  # the worker's start (imports, CUDA) has its own, longer limit
                    item = lines.get(timeout=timeout_s if ready else max(timeout_s, STARTUP_TIMEOUT_S))
                except queue.Empty:
                    proc.kill()
                    timed_out = True
                    break
                if item is None:
                    break
                payload = json.loads(item)
                if payload.get("ready"):
                    ready = True
                    continue
                if payload.get("restart"):
                    restart = True
                    continue
                done.append(DoctorRow(**payload))
                got += 1
            rc = proc.wait()
            pending = pending[got:]
            if pending and not restart:  # the worker died (or hung) on the first row it did not report
                op, backend, device, dtype = pending.pop(0)
                detail = _crash_detail(None if timed_out else rc, _last_line(err_path),
                                       f"{op}/{backend} on {device} {dtype}")
                if timed_out:
                    detail = detail.replace("timed out", f"timed out after {timeout_s:g} s", 1)
                done.append(DoctorRow(op, backend, device, dtype, "FAIL", detail=detail))
        finally:
            os.unlink(err_path)
    return done


def run_doctor(devices: list[str] | None = None, *, ops: list[str] | None = None, imports: list[str] | None = None,
               timeout_s: float = 600.0, jobs: int = 1, isolate: bool | None = None) -> list[DoctorRow]:
    """Check each registered backend on each available device and dtype against the reference (fp64, CPU) in worker
    processes. ``imports``: modules that register more backends (imported here and in every worker).
    ``timeout_s``: the most one row may take (a kernel compile included). ``isolate``: one worker per backend
    (default: when a CUDA device is checked); else ``jobs`` workers share the backends. ``jobs``: workers at once."""
    imports = list(imports or [])
    for module in imports:
        importlib.import_module(module)
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    refs, table = references(), list_backends()
    wanted = sorted(op for op in table if op in refs) if ops is None else ops
    unknown = [op for op in wanted if op not in table or op not in refs]
    if unknown:
        known = ", ".join(sorted(set(table) & set(refs)))
        raise ValueError(f"unknown op {unknown[0]!r}; ops with a reference: {known}")
    if isolate is None:
        isolate = any(torch.device(d).type == "cuda" for d in devices)
    rows, groups = [], []
    for op in wanted:
        for backend in table[op]:
            pending = []
            for device in devices:
                for dtype in DTYPES:
                    reason = backend.rejects(device, getattr(torch, dtype))
                    if reason:
                        rows.append(DoctorRow(op, backend.name, device, dtype, "skipped", detail=reason))
                    else:
                        pending.append((op, backend.name, device, dtype))
            if pending:
                groups.append(pending)
    if not isolate and groups:  # jobs workers, each a share of the backends
        n = min(max(1, jobs), len(groups))
        groups = [[row for g in groups[i::n] for row in g] for i in range(n)]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for done in pool.map(lambda g: _run_group(g, imports, timeout_s), groups):
            rows.extend(done)
    order = {(d, t): i for i, (d, t) in enumerate((d, t) for d in devices for t in DTYPES)}
    rank = {(op, b.name): i for i, (op, b) in enumerate((op, b) for op in wanted for b in table[op])}
    return sorted(rows, key=lambda r: (rank[(r.op, r.backend)], order[(r.device, r.dtype)]))


def summary(rows: list[DoctorRow]) -> str:
    """``"N passed, M failed, K skipped"``."""
    count = {s: sum(r.status == s for r in rows) for s in ("pass", "FAIL", "skipped")}
    return f"{count['pass']} passed, {count['FAIL']} failed, {count['skipped']} skipped"


def rows_as_dicts(rows: list[DoctorRow]) -> list[dict]:
    return [asdict(r) for r in rows]


if __name__ == "__main__":
    _worker_main(json.loads(sys.argv[1]))
