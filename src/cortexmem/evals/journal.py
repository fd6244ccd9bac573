"""The runs a sweep has finished, kept as they finish: ``runs.partial.jsonl`` in the output directory.

A sweep that stops early (a crash, a killed job, a time limit) keeps every run it completed, and the same command
with the same ``--out`` trains only the runs still missing. The first line holds the sweep's settings; a journal
written with other settings is refused rather than mixed in, except for ``tf32``: each run records the precision it
trained under, so a sweep may resume under another one. The file goes away once ``results.json`` holds every
run; it stays when some runs failed, so a rerun retries just those.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..utils.io import one_line
from .schema import EvalSettings, RunResult

JOURNAL = "runs.partial.jsonl"
#: settings each run records on itself, which may differ between a journal and the sweep resuming it
RUN_RECORDED = ("tf32",)


def plan_key(entry: tuple) -> str:
    """A plan entry ``(stack, task, length, options, d_hidden)`` as a stable string."""
    return json.dumps(list(entry), sort_keys=True)


class RunJournal:
    """Append-only record of the finished runs of one sweep (see the module docstring)."""

    def __init__(self, directory: Path, settings: EvalSettings) -> None:
        self.path = Path(directory) / JOURNAL
        self.settings = settings.model_dump(mode="json")

    @staticmethod
    def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
        """The settings a resumed sweep must share (not ``tf32``: every run records its own)."""
        return {k: v for k, v in settings.items() if k not in RUN_RECORDED}

    def load(self) -> dict[str, RunResult]:
        """The runs a previous invocation finished, by plan key; a ValueError (one line) for a foreign journal."""
        if not self.path.is_file():
            return {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        prior = header.get("settings")
        if not isinstance(prior, dict) or self._comparable(prior) != self._comparable(self.settings):
            raise ValueError(f"{self.path} holds a partial sweep with other settings; rerun that command, or use "
                             "another --out (or delete the file) to start afresh")
        done: dict[str, RunResult] = {}
        for line in lines[1:]:
            try:
                rec = json.loads(line)
                done[rec["key"]] = RunResult.model_validate(rec["run"])
            except (ValueError, KeyError, TypeError):  # a line cut short by a crash: that run is trained again
                continue
        return done

    def add(self, entry: tuple, run: RunResult) -> None:
        """Append one finished run (flushed to disk before returning)."""
        self._append({"key": plan_key(entry), "run": json.loads(run.model_dump_json())})

    def _append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "a", encoding="utf-8") as f:
            if new:
                f.write(json.dumps({"settings": self.settings}) + "\n")
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


#: in the ``skipped`` reason of a run that raised (``cortex eval`` then exits 1 after writing the others)
FAILED_MARK = " failed: "


def failure_line(label: str, err: BaseException) -> str:
    """One line for a run that raised: its label and the error, for the results' ``skipped`` list."""
    return f"{label}{FAILED_MARK}{type(err).__name__}: {one_line(str(err))[:300]}"
