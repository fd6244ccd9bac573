"""CPU throughput of the gated delta rule: naive loop vs chunkwise (WY/UT), forward and forward+backward.

Run: ``PYTHONPATH=src python benchmarks/gated_delta.py [--threads 1] [--heads 4] [--dim 64]``. Prints
tokens/s and
the chunk/naive speed-up for T in {256, 2048}.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from cortexmem import GatedDeltaCellConfig, HybridCellConfig, build_cell
from cortexmem.ops.gated_delta import chunk_gated_delta_rule, gated_delta_rule_naive


def _inputs(B, T, NH, D, grad):
    q = F.normalize(torch.randn(B, T, NH, D), dim=-1)
    k = F.normalize(torch.randn(B, T, NH, D), dim=-1)
    v = torch.randn(B, T, NH, D)
    g = F.logsigmoid(torch.randn(B, T, NH) + 4)
    beta = torch.rand(B, T, NH)
    s0 = torch.randn(B, NH, D, D) * 0.1
    return [t.requires_grad_(grad) for t in (q, k, v, g, beta, s0)]


def _time(fn, repeats):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cells", action="store_true", help="also time GatedDeltaCell / HybridCell")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, NH, D = args.batch, args.heads, args.dim
    table = Table(title=f"gated delta rule, CPU, B={B} NH={NH} Dk=Dv={D} chunk={args.chunk} "
                        f"threads={args.threads} (tokens/s = B*T/time)")
    for col in ("T", "pass", "naive tok/s", "chunk tok/s", "speed-up"):
        table.add_column(col, justify="right")
    for T in (256, 2048):
        for mode in ("fwd", "fwd+bwd"):
            grad = mode != "fwd"
            xs = _inputs(B, T, NH, D, grad)

            def run(op, xs=xs, grad=grad):
                q, k, v, g, beta, s0 = xs
                if op == "naive":
                    o, s = gated_delta_rule_naive(q, k, v, g, beta, s0)
                else:
                    o, s = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=args.chunk, initial_state=s0)
                if grad:
                    (o.square().sum() + s.square().sum()).backward()

            ctx = torch.enable_grad() if grad else torch.no_grad()
            with ctx:
                t_naive = _time(lambda run=run: run("naive"), args.repeats)
                t_chunk = _time(lambda run=run: run("chunk"), args.repeats)
            table.add_row(str(T), mode, f"{B * T / t_naive:,.0f}", f"{B * T / t_chunk:,.0f}",
                          f"{t_naive / t_chunk:.1f}x")
    Console().print(table)
    if args.cells:
        Console().print(_cells_table(args))


def _cells_table(args: argparse.Namespace) -> Table:
    """Cells at hidden 4 * dim: one sequence call of T = 2048 vs 256 one-token step calls (inference)."""
    H, NH = args.heads * args.dim, args.heads
    table = Table(title=f"cells, CPU, B={args.batch} hidden={H} NH={NH}, no grad (tokens/s)")
    for col in ("cell", "sequence T=2048", "step (decode)"):
        table.add_column(col, justify="right")
    cfgs = {
        "GatedDeltaCell": GatedDeltaCellConfig(hidden_size=H, num_heads=NH, chunk_size=args.chunk),
        "HybridCell w=512": HybridCellConfig(hidden_size=H, num_heads=NH, chunk_size=args.chunk, window=512),
    }
    for name, cfg in cfgs.items():
        cell = build_cell(cfg).eval()
        x = torch.randn(args.batch, 2048, H)
        with torch.no_grad():
            t_seq = _time(lambda cell=cell, x=x: cell(x), 1)
            _, st = cell(x[:, :600])

            def decode(cell=cell, x=x, st=st):
                s = st
                for t in range(256):
                    _, s = cell.step(x[:, t], s)

            t_step = _time(decode, 1)
        table.add_row(name, f"{args.batch * 2048 / t_seq:,.0f}", f"{args.batch * 256 / t_step:,.0f}")
    return table


if __name__ == "__main__":
    main()
