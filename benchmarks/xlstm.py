"""CPU forward+backward throughput of mLSTMCell / sLSTMCell, and the naive/chunkwise ratio for mLSTM.

    PYTHONPATH=src python benchmarks/xlstm.py [--batch 8 --steps 256 --hidden 128 --threads 1 --repeats 5]

Prints tokens/s (B*T per forward+backward) and ratios; the "naive" rows run the same cell with its sequence op
swapped for the reference loop. The machine is shared: timings are the median of
``--repeats`` runs after one warm-up and still vary with the load of the other users.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch

import cortexmem.cells.mlstm as mlstm_module
import cortexmem.cells.slstm as slstm_module
from cortexmem import build_cell, mLSTMCellConfig, sLSTMCellConfig
from cortexmem.ops.mlstm import mlstm_chunkwise, mlstm_naive
from cortexmem.ops.slstm import slstm_naive


def _time(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cell_step(cell, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        cell.zero_grad(set_to_none=True)
        y, _ = cell(x)
        y.pow(2).mean().backward()
    return run


def _op_step(op, B, NH, T, dk, dv, **kw) -> Callable[[], None]:
    g = torch.Generator().manual_seed(0)
    ins = [torch.randn(B, NH, T, dk, generator=g), torch.randn(B, NH, T, dk, generator=g) * dk**-0.5,
           torch.randn(B, NH, T, dv, generator=g), torch.randn(B, NH, T, generator=g),
           torch.nn.functional.logsigmoid(torch.randn(B, NH, T, generator=g) + 3),
           torch.zeros(B, NH, dk, dv), torch.zeros(B, NH, dk), torch.zeros(B, NH)]
    ins = [t.requires_grad_(True) for t in ins]

    def run() -> None:
        h, _ = op(*ins, None, **kw)
        h.pow(2).mean().backward()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, T, H = args.batch, args.steps, args.hidden
    tokens = B * T
    x = torch.randn(B, T, H, requires_grad=True)
    print(f"CPU forward+backward, B={B} T={T} d={H} heads={args.heads} chunk={args.chunk} "
          f"threads={args.threads} (median of {args.repeats})")

    mcell = build_cell(mLSTMCellConfig(hidden_size=H, num_heads=args.heads, chunk_size=args.chunk))
    t_chunk = _time(_cell_step(mcell, x), args.repeats)
    naive_op = lambda *a, **k: mlstm_naive(*a[:9])  # noqa: E731 (drops chunk_size)
    with mock.patch.object(mlstm_module, "mlstm_chunkwise", naive_op):
        t_naive = _time(_cell_step(mcell, x), args.repeats)
    scell = build_cell(sLSTMCellConfig(hidden_size=H, num_heads=args.heads))
    t_s = _time(_cell_step(scell, x), args.repeats)
    with mock.patch.object(slstm_module, "slstm_scan", slstm_naive):
        t_s_naive = _time(_cell_step(scell, x), args.repeats)

    dk, dv = mcell.dk, mcell.dv
    t_op_chunk = _time(_op_step(mlstm_chunkwise, B, args.heads, T, dk, dv, chunk_size=args.chunk), args.repeats)
    t_op_naive = _time(_op_step(mlstm_naive, B, args.heads, T, dk, dv), args.repeats)

    rows = [
        ("mLSTMCell (chunkwise)", t_chunk), ("mLSTMCell (naive loop)", t_naive),
        ("sLSTMCell (scan, manual backward)", t_s),
        ("sLSTMCell (naive loop, autograd)", t_s_naive),
        (f"mLSTM op chunkwise (dk={dk}, dv={dv})", t_op_chunk), ("mLSTM op naive loop", t_op_naive),
    ]
    for name, t in rows:
        print(f"{name:40s} {t * 1e3:9.1f} ms   {tokens / t:12,.0f} tokens/s")
    print(f"mLSTM naive/chunkwise ratio: cell {t_naive / t_chunk:.1f}x, op {t_op_naive / t_op_chunk:.1f}x")
    print(f"sLSTM naive/scan ratio: cell {t_s_naive / t_s:.1f}x")


if __name__ == "__main__":
    main()
