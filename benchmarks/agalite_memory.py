"""AGaLiTeCell forward+backward on CPU: peak allocated memory and time, custom-backward scan vs the old one.

Run: ``PYTHONPATH=src python benchmarks/agalite_memory.py [--batch 8] [--seq 256] [--hidden 128] [--threads 1]``.
"before" is the previous scan (closed-form chunk weights ``exp(A_t - A_s)`` over ``[B, chunk, chunk, nh, F]``,
differentiated by autograd, which keeps every chunk's weights); "after" is
:func:`cortexmem.ops.agalite.gated_scan` (Hillis-Steele chunks, reversed-scan backward saving only gates,
start and outputs). Peak memory = the maximum of the running sum of the CPU allocations and frees that
``torch.profiler`` records during one forward+backward (memory held before it, parameters and inputs, excluded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.profiler import ProfilerActivity, profile

from cortexmem import AGaLiTeCell, AGaLiTeCellConfig
from cortexmem.ops.agalite import chunk as chunk_mod


def closed_form_scan(log_a, coef, u, x0, resets, chunk):
    """The previous ``gated_scan``: per chunk ``x_t = sum_s exp(A_t - A_s) b_s + exp(A_t) x0`` via autograd."""
    B, T = log_a.shape[:2]
    b = coef.view(*coef.shape, *([1] * (u.dim() - 2))) * u[:, :, None]
    outs, x = [], x0
    for a in range(0, T, chunk):
        la = log_a[:, a : a + chunk]
        L = la.shape[1]
        cum = la.cumsum(1)
        diff = cum[:, :, None] - cum[:, None, :]
        idx = torch.arange(L, device=la.device)
        keep = (idx[:, None] >= idx[None, :])[None].expand(B, L, L)
        fresh = None
        if resets is not None:
            cnt = resets[:, a : a + chunk].long().cumsum(1)
            keep = keep & (cnt[:, :, None] == cnt[:, None, :])
            fresh = cnt == 0
        kshape = (B, L, L) + (1,) * (diff.dim() - 3)
        w = torch.where(keep.view(kshape), torch.exp(torch.where(keep.view(kshape), diff, 0.0)), 0.0)
        xs = torch.einsum("bts...,bsk...->btk...", w, b[:, a : a + chunk])
        carry = torch.exp(cum)
        if fresh is not None:
            carry = torch.where(fresh.view(B, L, *([1] * (cum.dim() - 2))), carry, 0.0)
        xs = xs + carry[:, :, None] * x[:, None]
        outs.append(xs)
        x = xs[:, -1]
    return torch.cat(outs, 1)


@contextlib.contextmanager
def _scan_impl(fn):
    saved = chunk_mod.gated_scan
    chunk_mod.gated_scan = fn
    try:
        yield
    finally:
        chunk_mod.gated_scan = saved


def _step(cell, x, resets):
    cell.zero_grad(set_to_none=True)
    y, _ = cell(x, None, resets=resets)
    y.square().mean().backward()
    return y


def _peak_bytes(fn) -> int:
    """Peak of the running sum of every CPU allocation/free recorded (chrome-trace ``[memory]`` events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    mem = sorted((e["ts"], e["args"]["Bytes"]) for e in events if e.get("name") == "[memory]")
    run = peak = 0
    for _, nbytes in mem:
        run += nbytes
        peak = max(peak, run)
    return peak


def _best_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--chunk", type=int, default=None, help="chunk_size (default: the config's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = AGaLiTeCellConfig(hidden_size=args.hidden)
    if args.chunk is not None:
        cfg = cfg.model_copy(update={"chunk_size": args.chunk})
    cell = AGaLiTeCell(cfg)
    x = torch.randn(args.batch, args.seq, args.hidden)
    resets = torch.rand(args.batch, args.seq) < 0.01
    rows, grads = [], {}
    for name, fn in (("before (closed form + autograd)", closed_form_scan), ("after (scan + custom bwd)", None)):
        with _scan_impl(fn or chunk_mod.gated_scan):
            step = lambda: _step(cell, x, resets)  # noqa: E731
            peak = _peak_bytes(step)
            secs = _best_time(step, args.repeats)
            grads[name] = [q.grad.clone() for q in cell.parameters()]
        rows.append((name, peak, secs))
    diff = max((a - b).abs().max().item() for a, b in zip(*grads.values(), strict=True))
    tab = Table(title=f"AGaLiTeCell fwd+bwd, B={args.batch} T={args.seq} d={args.hidden} ({cfg.chunk_size=})")
    for c in ("scan", "peak MB", "ms"):
        tab.add_column(c)
    for name, peak, secs in rows:
        tab.add_row(name, f"{peak / 2**20:.1f}", f"{secs * 1e3:.1f}")
    con = Console()
    con.print(tab)
    (_, p0, t0), (_, p1, t1) = rows
    con.print(f"peak memory ratio before/after: {p0 / p1:.2f}x, time ratio before/after: {t0 / t1:.2f}x")
    con.print(f"max |grad before - grad after| over parameters: {diff:.2e}")


if __name__ == "__main__":
    main()
