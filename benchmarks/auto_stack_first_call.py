"""Time to build a pattern-language stack and run its first forward (+ backward) (target: 4-layer "AXMS" < 5 s).

Usage: ``python benchmarks/auto_stack_first_call.py [--pattern AXMS] [--layers 4] [--d-hidden 256] [--device cuda]
[--backward]``. On CUDA, point ``TRITON_CACHE_DIR`` at an empty folder to include every kernel compile.
"""

from __future__ import annotations

import argparse

import torch

from cortexmem import BUILTIN_TOKENS, tokenize
from cortexmem.tools.first_call import time_first_call


def missing_cells(pattern: str) -> list[str]:
    """Cell configs the pattern's built-in tokens need that are not registered."""
    out = []
    for tok in tokenize(pattern):
        spec = BUILTIN_TOKENS.get(tok)
        missing = None if spec is None else spec.missing()
        if missing is not None:
            out.append(f"{tok} needs {missing}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pattern", default="AXMS")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backward", action="store_true", help="time forward + backward")
    ap.add_argument("--budget", type=float, default=5.0, help="seconds allowed for build + first forward")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    missing = missing_cells(args.pattern)
    if missing:
        print(f"pattern {args.pattern!r}: cannot build yet; " + "; ".join(missing))
        raise SystemExit(1)
    build_s, fwd_s = time_first_call(args.pattern, args.layers, args.d_hidden, args.batch, args.steps, args.device,
                                     args.backward)
    total = build_s + fwd_s
    print(f"pattern={args.pattern!r} layers={args.layers} d_hidden={args.d_hidden} x=[{args.batch}, "
          f"{args.steps}, {args.d_hidden}] threads={args.threads} device={args.device} backward={args.backward}")
    print(f"build {build_s:.3f} s  first call {fwd_s:.3f} s  total {total:.3f} s  "
          f"budget {args.budget:.1f} s  ratio total/budget {total / args.budget:.3f}  "
          f"{'OK' if total < args.budget else 'OVER BUDGET'}")


if __name__ == "__main__":
    main()
