"""Which launch configs of the gated-delta Triton forward run at Dk = Dv = 128 on this GPU: one process each.

An illegal memory access kills the CUDA context of its process, so every config runs in a child process (a few at
a time) and the parent prints one line per config: ``ok`` with the relative RMS error vs the fp64 naive loop, or
the child's last error line. The unsplit configs (128-row state tile) are the ones that crashed on an H100 with
Triton 3.6; ``wy`` runs the WY kernel alone (bf16 products). Configs without ``products`` take the launcher's
default (bf16 products for bf16 inputs here: 5 chunks, fused read-out); the refused combinations (bf16 products
with one stage or with the read-out parallel over chunks) are left out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

CONFIGS = [
    {"wy": True},
    {"split": True, "fused": True, "block_v": 16, "num_stages": 2},
    {"split": True, "fused": True, "block_v": 32, "num_stages": 2},
    {"split": True, "fused": False, "block_v": 32, "num_stages": 2, "out_block_v": 64, "products": "tf32"},
    {"split": False, "fused": True, "block_v": 32, "num_stages": 2, "products": "tf32"},
    {"split": False, "fused": True, "block_v": 16, "num_stages": 1, "products": "tf32"},
    {"split": False, "fused": False, "block_v": 32, "num_stages": 1, "products": "tf32"},
    {"dtype": "float32", "fused": True, "block_v": 32},
]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def child(cfg: dict) -> None:
    """Run one config on B=2 T=300 NH=2 D=128 with an initial state and resets; print the errors as JSON."""
    import torch
    import torch.nn.functional as F

    from cortexmem.ops.gated_delta import gated_delta_rule_naive
    from cortexmem.ops.gated_delta.triton import gated_delta_forward, wy_terms

    gen = torch.Generator().manual_seed(0)
    B, T, NH, D = 2, 300, 2, 128
    q, k = (F.normalize(torch.randn(B, T, NH, D, generator=gen), dim=-1) for _ in range(2))
    v = torch.randn(B, T, NH, D, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, NH, generator=gen) + 3)
    beta = torch.rand(B, T, NH, generator=gen)
    s0 = torch.randn(B, NH, D, D, generator=gen)
    r = torch.rand(B, T, generator=gen) < 0.02
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: only under TRITON_INTERPRET=1 (a smoke run)
    q, k, v, g, beta, s0, r = (t.to(dev) for t in (q, k, v, g, beta, s0, r))
    cfg = dict(cfg)
    dtype = getattr(torch, cfg.pop("dtype", "bfloat16"))
    x = [t.to(dtype) for t in (q, k, v, g, beta, s0)]
    with torch.no_grad():
        if cfg.pop("wy", False):
            W, U = wy_terms(*x[1:5], r.to(torch.int8), 64, D, D, torch.bfloat16)
            _sync()
            print(json.dumps({"finite": bool(W.isfinite().all() and U.isfinite().all())}))
            return
        o, s = gated_delta_forward(*x[:5], chunk_size=64, initial_state=x[5], output_final_state=True, resets=r,
                                   **cfg)
        _sync()
    o_ref, s_ref = gated_delta_rule_naive(q.double(), k.double(), v.double(), g.double(), beta.double(),
                                          initial_state=s0.double(), resets=r)

    def rel(a, b):
        return ((a.double() - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()

    print(json.dumps({"err_o": float(f"{rel(o, o_ref):.3g}"), "err_s": float(f"{rel(s, s_ref):.3g}")}))


def run(cfg: dict) -> str:
    proc = subprocess.run([sys.executable, __file__, json.dumps(cfg)], capture_output=True, text=True, timeout=300)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    if proc.returncode == 0 and lines:
        return f"ok    {json.dumps(cfg)}: {lines[-1]}"
    last = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
    return f"FAIL  {json.dumps(cfg)}: rc={proc.returncode} {last[:200]}"


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(json.loads(sys.argv[1]))
    else:
        with ThreadPoolExecutor(4) as pool:
            for line in pool.map(run, CONFIGS):
                print(line, flush=True)
