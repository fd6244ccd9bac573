"""Run every GPU test (marker ``gpu``) so that one CUDA error cannot hide the rest; print where failures start.

A CUDA error such as an illegal memory access leaves the process's CUDA context unusable, and every later test in
that process then fails too. This runs each file holding ``gpu`` tests in its own process; when a file fails, each of
its failed tests runs again alone, which separates the test that broke the context (fails alone too) from the ones
it took down with it (pass alone). ``--out DIR`` writes ``gpu_tests.json`` and one log per file.

    python benchmarks/gpu_tests.py --out runs/gpu_tests [--timeout 900] [-k EXPR] [tests/gpu/test_graphed.py ...]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from cortexmem.utils.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
_CUDA_ERROR = re.compile(r"illegal memory access|CUDA error|cudaError", re.I)
_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+::\S+)", re.M)


def gpu_test_files() -> list[str]:
    """Test files under tests/ that use the ``gpu`` marker, relative to the repository root."""
    files = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if "mark.gpu" in path.read_text(encoding="utf-8"):
            files.append(str(path.relative_to(ROOT)))
    return files


def _pytest(args: list[str], timeout: float) -> tuple[int, str, float]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *args]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        code, out = 124, f"{err.stdout or ''}{err.stderr or ''}\ntimed out after {timeout:.0f} s"
        out = out if isinstance(out, str) else out.decode(errors="replace")
    return code, out, time.perf_counter() - start


def _summary_line(out: str) -> str:
    lines = [ln for ln in out.strip().splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    return lines[-1].strip("= ") if lines else out.strip().splitlines()[-1] if out.strip() else ""


def run_file(path: str, timeout: float, keyword: str | None = None, out_dir: Path | None = None,
             marker: str | None = "gpu", workers: int = 0) -> dict:
    """One file in one process (its ``marker`` tests only); on failure, each failed test alone (origin vs cascade).

    ``workers > 0`` spreads the file over that many pytest-xdist processes (Triton compiles of the many launch
    configurations then overlap); a CUDA error then takes down only its worker's later tests.
    """
    args = [path, *(["-k", keyword] if keyword else []), *(["-m", marker] if marker else []),
            *(["-n", str(workers)] if workers else [])]
    code, out, secs = _pytest(args, timeout)
    if out_dir is not None:
        atomic_write_text(out_dir / (Path(path).stem + ".log"), out)
    res = {"file": path, "returncode": code, "seconds": round(secs, 1), "summary": _summary_line(out),
           "cuda_error": bool(_CUDA_ERROR.search(out)), "failed": _FAILED.findall(out), "alone": {}}
    if code not in (0, 5) and res["failed"]:
        for test_id in res["failed"]:
            c, o, _ = _pytest([test_id], timeout)
            res["alone"][test_id] = "passes alone (cascade)" if c == 0 else (
                "fails alone" + (" with a CUDA error" if _CUDA_ERROR.search(o) else ""))
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="test files (default: every file with gpu tests)")
    parser.add_argument("--out", default=None, help="folder for gpu_tests.json and the logs")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest process")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression")
    parser.add_argument("--workers", type=int, default=0, help="pytest-xdist processes per file (0: none)")
    args = parser.parse_args()
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if args.workers:
        import importlib.util

        if importlib.util.find_spec("xdist") is None:
            parser.error("--workers needs pytest-xdist, which is not installed")
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    files = args.files or gpu_test_files()
    results = []
    for path in files:
        res = run_file(path, args.timeout, args.keyword, out_dir, workers=args.workers)
        results.append(res)
        print(f"{path}: {res['summary']} ({res['seconds']} s){'  [CUDA error]' if res['cuda_error'] else ''}",
              flush=True)
        for test_id, verdict in res["alone"].items():
            print(f"    {verdict:32s} {test_id}", flush=True)
    if out_dir is not None:
        atomic_write_json(out_dir / "gpu_tests.json", results)
    bad = [r for r in results if r["returncode"] not in (0, 5)]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
