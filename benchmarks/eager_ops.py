"""Launched aten ops and forward+backward time of 1-layer auto stacks (eager PyTorch, no compile).

Run: ``PYTHONPATH=src python benchmarks/eager_ops.py [--tokens X Ag M AXMS] [--batch 32] [--seq 256]
[--hidden 256] [--device cuda] [--out DIR]``. In eager mode a small-batch block is launch-bound: its time is
roughly (aten ops) x (per-op overhead), so the op counts (forward / backward, counted with a
``TorchDispatchMode``, views included) are the figure to cut; times are medians over ``--reps`` runs.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils._python_dispatch import TorchDispatchMode

import cortexmem


class OpCounter(TorchDispatchMode):
    """Counts every aten op that reaches the dispatcher (by name)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def measure(token: str, batch: int, seq: int, hidden: int, device: torch.device, reps: int) -> dict:
    """Op counts and median forward+backward milliseconds of ``build_cortex_auto_stack(hidden, 1, token)``."""
    torch.manual_seed(0)
    stack = cortexmem.build_cortex_auto_stack(hidden, 1, token).to(device)
    x = torch.randn(batch, seq, hidden, device=device, requires_grad=True)

    def run() -> torch.Tensor:
        y, _ = stack(x)
        return y.float().square().mean()

    for _ in range(3):
        run().backward()
    with OpCounter() as fwd:
        loss = run()
    with OpCounter() as bwd:
        loss.backward()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {
        "token": token, "fwd_ops": sum(fwd.ops.values()), "bwd_ops": sum(bwd.ops.values()),
        "fwd_bwd_ms": sorted(times)[len(times) // 2] * 1e3,
        "top_fwd": fwd.ops.most_common(5), "top_bwd": bwd.ops.most_common(5),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", nargs="+", default=["X", "Ag", "M", "AXMS"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [measure(t, args.batch, args.seq, args.hidden, device, args.reps) for t in args.tokens]
    table = Table(title=f"1-layer stacks, B={args.batch} T={args.seq} d={args.hidden} on {device}")
    for col in ("token", "fwd ops", "bwd ops", "total", "fwd+bwd ms"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["token"], str(r["fwd_ops"]), str(r["bwd_ops"]), str(r["fwd_ops"] + r["bwd_ops"]),
                      f"{r['fwd_bwd_ms']:.2f}")
    Console().print(table)
    if args.out is not None:
        from cortexmem.utils.io import atomic_write_json

        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out / "eager_ops.json", {"config": {k: str(v) for k, v in vars(args).items()},
                                                         "rows": rows})


if __name__ == "__main__":
    main()
