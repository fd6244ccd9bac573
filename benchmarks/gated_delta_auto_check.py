"""Gated delta's ``auto`` choice for training on CUDA, checked on the GPU: which backend it takes for fp32 and bf16
inputs that need a gradient, how far its outputs and gradients (q, k, v, g, beta, initial state; T=157 with two
resets) are from the torch backend in fp32, and the training-step time of the MQAR stacks at d=128, B=256, T=256.

    python benchmarks/gated_delta_auto_check.py            # CUDA; output in docs/figures/gated_delta_auto_fp32_h100.txt
    python benchmarks/gated_delta_auto_check.py --device cpu --batch 8   # smoke (auto is the torch path there)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cortexmem.ops.gated_delta import gated_delta_rule
from cortexmem.ops.registry import select_backend
from cortexmem.stacks.named import build_stack

NAMES = ["o", "S", "dq", "dk", "dv", "dg", "dbeta", "dh0"]


def inputs(dev: torch.device, B: int = 3, T: int = 157, H: int = 4, D: int = 64):
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    k = F.normalize(torch.randn(B, T, H, D, generator=g), dim=-1)
    v = torch.randn(B, T, H, D, generator=g)
    decay = -torch.rand(B, T, H, generator=g) * 0.1
    beta = torch.rand(B, T, H, generator=g)
    h0 = torch.randn(B, H, D, D, generator=g) * 0.1
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, 70] = resets[2, 100] = True
    return [t.to(dev).requires_grad_() for t in (q, k, v, decay, beta, h0)], resets.to(dev)


def outputs_and_grads(backend: str, dev: torch.device) -> list[torch.Tensor]:
    xs, resets = inputs(dev)
    o, s = gated_delta_rule(*xs[:5], initial_state=xs[5], resets=resets, backend=backend)
    (o.square().sum() + s.square().sum()).backward()
    return [o.detach(), s.detach()] + [x.grad for x in xs]


def step_ms(name: str, dev: torch.device, batch: int, vocab: int = 512, d: int = 128) -> float:
    model = build_stack(name, d).to(dev)
    emb, head = torch.nn.Embedding(vocab, d).to(dev), torch.nn.Linear(d, vocab).to(dev)
    opt = torch.optim.AdamW([*model.parameters(), *emb.parameters(), *head.parameters()], lr=1e-3)
    x = torch.randint(0, vocab, (batch, batch), device=dev)

    def step() -> None:
        y, _ = model(emb(x), None)
        loss = F.cross_entropy(head(y).flatten(0, 1), x.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(10):
        step()
    sync()
    return (time.perf_counter() - t0) / 10 * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=256, help="batch and sequence length of the step timing")
    args = p.parse_args()
    dev = torch.device(args.device)
    for dt in (torch.float32, torch.bfloat16):
        impl = select_backend("gated_delta", "auto", device=dev, dtype=dt, chunk_size=64, needs_grad=True, dk=64,
                              dv=64)
        print("auto pick", dt, impl.name)
    auto, ref = outputs_and_grads("auto", dev), outputs_and_grads("torch", dev)
    for n, a, b in zip(NAMES, auto, ref, strict=True):
        print(f"{n}: max abs err {(a - b).abs().max().item():.2e} (scale {b.abs().max().item():.2e})")
    for name in ("gated_delta", "mlstm", "hybrid_w32"):
        print(f"{name} d=128 B{args.batch} T{args.batch} train step {step_ms(name, dev, args.batch):.1f} ms",
              flush=True)


if __name__ == "__main__":
    main()
