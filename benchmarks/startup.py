"""Start-up time of ``import cortexmem`` and ``cortex --help``, each in fresh interpreters (issue 25).

Goal: ``cortex --help`` < 1.0 s and ``import cortexmem`` < 1.5 s. Also times ``import cortexmem`` followed by the
first use of a public name (which imports torch, the cells and blocks), and ``import torch`` alone, as the floor
that lazy imports avoid. Prints the median of ``--repeats`` runs and exits 1 when a goal is missed.

    python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

CASES = {
    "import cortexmem": ([sys.executable, "-c", "import cortexmem"], 1.5),
    "cortex --help": ([sys.executable, "-m", "cortexmem.cli", "--help"], 1.0),
    "import cortexmem + first use": ([sys.executable, "-c", "import cortexmem; cortexmem.LSTMCell"], None),
    "import torch (floor avoided)": ([sys.executable, "-c", "import torch"], None),
}


def median_seconds(cmd: list[str], repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    missed = []
    for name, (cmd, goal) in CASES.items():
        s = median_seconds(cmd, args.repeats)
        verdict = "" if goal is None else (f"  goal < {goal:.1f} s: " + ("ok" if s < goal else "MISSED"))
        print(f"{name:32s} {s:6.3f} s{verdict}")
        if goal is not None and s >= goal:
            missed.append(name)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
