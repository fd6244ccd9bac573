"""Build + first forward (+ backward) time of a pattern-language stack, in this process or in a fresh one.

``python -m cortexmem.tools.first_call PATTERN LAYERS D BATCH SEQ DEVICE`` prints one JSON line
``{"build_s": ..., "call_s": ..., "total_s": ...}``; :func:`first_call_fresh_process` runs it with an empty Triton
cache, which is how a user's very first call goes (every kernel compiled).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import torch


def time_first_call(pattern: str, layers: int, d_hidden: int, batch: int, steps: int, device: str = "cpu",
                    backward: bool = True) -> tuple[float, float]:
    """``(build seconds, first forward (+ backward) seconds)`` of a fresh stack, synchronised."""
    from ..stacks import build_cortex_auto_stack

    t0 = time.perf_counter()
    stack = build_cortex_auto_stack(d_hidden, layers, pattern).to(device)
    t1 = time.perf_counter()
    x = torch.randn(batch, steps, d_hidden, device=device)
    if backward:
        stack(x)[0].square().mean().backward()
    else:
        with torch.no_grad():
            stack(x)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return t1 - t0, time.perf_counter() - t1


def first_call_fresh_process(pattern: str, layers: int, d_hidden: int, batch: int, steps: int, device: str,
                             timeout_s: float = 300.0) -> dict:
    """:func:`time_first_call` (forward + backward) in a new process whose Triton cache starts empty."""
    with tempfile.TemporaryDirectory(prefix="cortex-first-call-") as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        args = [sys.executable, "-m", "cortexmem.tools.first_call", pattern, str(layers), str(d_hidden), str(batch),
                str(steps), device]
        res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout_s)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        tail = (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1]
        raise RuntimeError(f"first-call process failed: {tail}"[:300])
    return json.loads(lines[-1])


if __name__ == "__main__":
    pattern, layers, d, batch, seq, dev = sys.argv[1:7]
    torch.manual_seed(0)
    build_s, call_s = time_first_call(pattern, int(layers), int(d), int(batch), int(seq), dev)
    print(json.dumps({"build_s": build_s, "call_s": call_s, "total_s": build_s + call_s}), flush=True)
