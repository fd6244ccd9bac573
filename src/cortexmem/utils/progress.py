"""Progress for long runs: a rich bar on a terminal, a plain line at least every 30 s when output is piped."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any


def make_progress(*columns: Any, console: Any = None, disable: bool = False, transient: bool = False,
                  interval: float | None = None) -> Any:
    """A ``rich.progress.Progress`` on a terminal, else a :class:`LineProgress` with the same methods."""
    stream = getattr(console, "file", None) or sys.stdout
    if disable or _is_tty(stream):
        from rich.progress import Progress

        return Progress(*columns, console=console, disable=disable, transient=transient)
    if interval is None:
        interval = float(os.environ.get("CORTEX_PROGRESS_INTERVAL", "30"))
    return LineProgress(interval=interval, transient=transient)


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """``description: done/total (pct) elapsed ETA`` on stderr every ``interval`` seconds (a daemon thread), and
    a last line at the end of a run that printed any (none for a run shorter than ``interval``, or ``transient``)."""

    def __init__(self, interval: float = 30.0, stream: Any = None, transient: bool = False) -> None:
        self.interval = max(0.05, float(interval))
        self.stream, self.transient, self.printed = stream, transient, 0
        self.tasks: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # rich.progress.Progress's interface, the part cortexmem uses
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cortex-progress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
            if self.printed and not self.transient:
                self._print()

    def __enter__(self) -> LineProgress:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        with self._lock:
            tid = len(self.tasks)
            self.tasks[tid] = {"description": description, "total": total, "completed": completed,
                               "start": time.monotonic(), "fields": fields}
        return tid

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, **fields: Any) -> None:
        with self._lock:
            t = self.tasks[task_id]
            if total is not None:
                t["total"] = total
            if completed is not None:
                t["completed"] = completed
            if advance is not None:
                t["completed"] += advance
            if description is not None:
                t["description"] = description
            t["fields"].update(fields)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def remove_task(self, task_id: int) -> None:
        with self._lock:
            self.tasks.pop(task_id, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._print()

    def _print(self) -> None:
        with self._lock:
            lines = [self._line(t) for t in self.tasks.values()]
        out = self.stream or sys.stderr
        self.printed += 1
        for line in lines:
            print(line, file=out, flush=True)

    @staticmethod
    def _line(t: dict[str, Any]) -> str:
        done, total = t["completed"], t["total"]
        elapsed = time.monotonic() - t["start"]
        parts = [f"{t['description']}: {done:g}" + (f"/{total:g}" if total else "")]
        if total:
            parts.append(f"({100 * done / total:.0f}%)")
        parts.append(f"{elapsed:.0f}s elapsed")
        if total and done:
            parts.append(f"ETA {elapsed * (total - done) / done:.0f}s")
        info = " ".join(str(v) for v in t["fields"].values() if v not in (None, ""))
        return " ".join(parts) + (f" {info}" if info else "")
