"""Milliseconds per training step of ``cortex eval``'s MQAR runs, per stack, under the step variants the trainer
can use: where the preset's time goes.

    python benchmarks/eval_step_profile.py --device cuda --slice 256:64 --d-hidden 128 --json out.json

Variants (each adds to the one before): ``base`` (fp32, TF32 off, logits at the masked positions), ``tf32``,
``dense`` (logits at every position, loss with ``ignore_index``: no host sync per step), ``fused`` (fused AdamW),
``graph`` (the whole step captured in a CUDA graph and replayed), ``bf16`` (``fused`` under bf16 autocast),
``bf16graph``. ``host_ms`` is the time to issue one step without waiting for the GPU.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from cortexmem.evals.models import EvalModel
from cortexmem.evals.stacks import build_stack
from cortexmem.evals.tasks import TRAIN, make_task
from cortexmem.runtime.precision import tf32_mode

STACKS = ("transformer", "gated_delta", "hybrid", "hybrid_w32", "mlstm", "mlstm_qk1", "lstm", "axon")
VARIANTS = ("base", "tf32", "dense", "fused", "graph", "bf16", "bf16graph")
#: what each variant turns on: TF32, dense logits, fused AdamW, CUDA graph, bf16 autocast
FLAGS = {"base": (0, 0, 0, 0, 0), "tf32": (1, 0, 0, 0, 0), "dense": (1, 1, 0, 0, 0), "fused": (1, 1, 1, 0, 0),
         "graph": (1, 1, 1, 1, 0), "bf16": (1, 1, 1, 0, 1), "bf16graph": (1, 1, 1, 1, 1)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_variant(stack: str, variant: str, tokens, targets, mask, d: int, vocab: int, classes: int,
                 device: torch.device, steps: int, warmup: int) -> dict[str, float]:
    _, dense, fused, graph, bf16 = FLAGS[variant]  # TF32: set by the caller
    graph = graph and device.type == "cuda"
    torch.manual_seed(0)
    model = EvalModel(build_stack(stack, d), vocab, classes, d).to(device)
    kw = {"fused": True} if fused and device.type == "cuda" else {}
    if graph:
        kw["capturable"] = True
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **kw)
    dense_targets = torch.where(mask, targets, torch.full_like(targets, -100))
    amp = torch.autocast(device.type, torch.bfloat16) if bf16 else torch.autocast(device.type, enabled=False)

    def step() -> None:
        with amp:
            if dense:
                feats, _ = model.features(tokens)
                logits = model.head(feats)
                loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), dense_targets.flatten())
            else:
                logits, _ = model(tokens, mask)
                loss = nn.functional.cross_entropy(logits.float(), targets[mask])
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=not graph)

    for _ in range(warmup):
        step()
    _sync(device)
    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        step = g.replay  # noqa: F811
        step()
        _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    host = (time.perf_counter() - t0) / steps
    _sync(device)
    wall = (time.perf_counter() - t0) / steps
    return {"ms": wall * 1e3, "host_ms": host * 1e3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--slice", action="append", default=None, help="L:PAIRS (repeatable; default 256:64)")
    p.add_argument("--d-hidden", type=int, action="append", default=None)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--stacks", default=",".join(STACKS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    device = torch.device(a.device)
    rows = []
    for sl in a.slice or ["256:64"]:
        length, pairs = map(int, sl.split(":"))
        spec = make_task("mqar", length, pairs=pairs)
        data = spec.split(TRAIN, a.batch, 0)
        tokens, targets, mask = (t.to(device) for t in (data.tokens, data.targets, data.mask))
        for d in a.d_hidden or [128]:
            for stack in a.stacks.split(","):
                for variant in a.variants.split(","):
                    try:
                        with tf32_mode("on" if FLAGS[variant][0] else "off"):  # restored after each variant
                            r = time_variant(stack, variant, tokens, targets, mask, d, spec.vocab_size,
                                             spec.num_classes, device, a.steps, a.warmup)
                    except Exception as e:  # a variant a stack cannot run is a row, not the end of the table
                        r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                    row = {"slice": sl, "d_hidden": d, "stack": stack, "variant": variant, **r}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
