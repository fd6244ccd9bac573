"""Build + first forward (and backward) time of the axon-family cells on CPU; no torch.compile anywhere.

Usage: ``PYTHONPATH=src python benchmarks/first_call.py [--hidden 128 --batch 4 --steps 128]``.
Target: every line under 5 s.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    import cortexmem as cm

    print(f"import cortexmem: {time.perf_counter() - t0:.2f} s")
    H = args.hidden
    configs = {
        "AxonCell": cm.AxonCellConfig(hidden_size=H),
        "AxonCell(srht)": cm.AxonCellConfig(hidden_size=H, use_srht=True),
        "AxonCell(full)": cm.AxonCellConfig(hidden_size=H, rank="full", rtu_size=32),
        "XLCell": cm.XLCellConfig(hidden_size=H),
        "XLCell(axon qkv)": cm.XLCellConfig(hidden_size=H, use_axon_qkv=True),
        "AGaLiTeCell": cm.AGaLiTeCellConfig(hidden_size=H),
        "mLSTM(axon)": cm.mLSTMCellConfig(hidden_size=H, use_axon_layer=True, use_axon_qkv=True),
        "sLSTM(axon)": cm.sLSTMCellConfig(hidden_size=H, use_axon_layer=True),
    }
    x = torch.randn(args.batch, args.steps, H)
    worst = 0.0
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        cell = cm.build_cell(cfg)
        t_build = time.perf_counter() - t0
        y, state = cell(x)
        t_fwd = time.perf_counter() - t0
        y.square().mean().backward()
        t_bwd = time.perf_counter() - t0
        t1 = time.perf_counter()
        with torch.no_grad():
            cell.step(x[:, 0], state)
        t_step = time.perf_counter() - t1
        worst = max(worst, t_fwd)
        print(
            f"{name:18s} build {t_build:6.3f} s | build+first forward {t_fwd:6.3f} s"
            f" | +backward {t_bwd:6.3f} s | one step {1e3 * t_step:7.2f} ms"
        )
    print(f"worst build+first forward: {worst:.2f} s ({'<' if worst < 5 else '>='} 5 s target)")


if __name__ == "__main__":
    main()
