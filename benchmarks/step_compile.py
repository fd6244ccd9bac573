"""Step latency of a pattern stack through ``StepRunner`` per compile mode (goal: 4 x "AXMS", B=32: <= 0.5 ms).

    python benchmarks/step_compile.py [--pattern AXMS --layers 4 --batch 32 --d 256] [--modes off,default,max-autotune]
        [--json OUT.json]

Each mode: build time (compile and graph capture included) and the median step time, in one process; ``off`` is the
plain CUDA graph of the eager step. The largest difference to eager ``step`` is printed as a check. CUDA only.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from cortexmem import StepRunner, build_cortex_auto_stack
from cortexmem.runtime.step_runner import COMPILE_MODES
from cortexmem.tools.bench import _time
from cortexmem.utils.io import atomic_write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pattern", default="AXMS")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--modes", default="off,default,max-autotune")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m != "off" and m not in COMPILE_MODES]
    if bad:
        p.error(f"--modes: unknown {bad}; choose from off, {', '.join(COMPILE_MODES)}")
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    dev = torch.device("cuda")
    torch.manual_seed(0)
    stack = build_cortex_auto_stack(args.d, args.layers, args.pattern).to(dev).eval()
    x = torch.randn(args.batch, args.d, device=dev)
    with torch.no_grad():
        ref, _ = stack.step(x, stack.init_state(args.batch, device=dev))
    results = {"pattern": f"{args.layers}x{args.pattern}", "batch": args.batch, "d": args.d,
               "device": torch.cuda.get_device_name(), "modes": {}}
    for mode in modes:
        t0 = time.perf_counter()
        try:
            runner = StepRunner(stack, args.batch, dev, compile=False if mode == "off" else mode)
            build_s = time.perf_counter() - t0
            err = (runner.step(x) - ref).abs().max().item()  # the first step from the fresh state
            runner.reset()
            ms = _time(lambda runner=runner: runner.step(x), dev, args.repeats)
            row = {"step_ms": ms, "build_s": build_s, "max_abs_diff_vs_eager": err}
        except Exception as e:  # noqa: BLE001 - a failed mode is reported, the others still run
            row = {"failed": f"{type(e).__name__}: {e}"[:300]}
        results["modes"][mode] = row
        print(f"{mode:28s} {json.dumps(row)}", flush=True)
    if args.json:
        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
