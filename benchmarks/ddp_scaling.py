"""Data-parallel scaling: training throughput of one cortex stack on 1 vs N processes (GPUs, or CPU with gloo).

    python benchmarks/ddp_scaling.py --pattern AXMS --d-hidden 256 --layers 4 --batch 32 --seq 256 --gpus 2
    python benchmarks/ddp_scaling.py --device cpu --procs 2 --d-hidden 32 --layers 1 --batch 4 --seq 32   # smoke

Each process trains on its own ``--batch`` rows (weak scaling, the usual DDP setting); throughput is total tokens per
second across processes; efficiency = throughput(N) / (N * throughput(1)). NCCL on CUDA (NVLink multicast stays off:
NCCL_NVLS_ENABLE=0 is set unless the caller set it), gloo on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, args: argparse.Namespace, port: int, out: dict) -> None:
    import cortexmem

    torch.set_num_threads(max(1, args.threads))
    cuda = args.device == "cuda"
    dev = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    stack = cortexmem.build_cortex_auto_stack(args.d_hidden, args.layers, args.pattern).to(dev)
    model = DDP(stack, device_ids=[rank] if cuda else None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator(device=dev).manual_seed(rank)
    x = torch.randn(args.batch, args.seq, args.d_hidden, device=dev, generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        y, _ = model(x)
        y.square().mean().backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize(dev)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize(dev)
    dist.barrier()
    elapsed = time.perf_counter() - t0
    if rank == 0:
        out["seconds"] = elapsed
        out["tokens_per_s"] = world * args.batch * args.seq * args.steps / elapsed
    dist.destroy_process_group()


def measure(world: int, args: argparse.Namespace) -> dict:
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(world, args, _free_port(), out), nprocs=world, join=True)
    return dict(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pattern", default="AXMS")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--procs", "--gpus", dest="procs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and torch.cuda.device_count() < args.procs:
        raise SystemExit(f"--procs {args.procs} needs {args.procs} GPUs, found {torch.cuda.device_count()}")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    one = measure(1, args)
    many = measure(args.procs, args)
    result = {
        "device": args.device, "procs": args.procs, "pattern": args.pattern, "layers": args.layers,
        "d_hidden": args.d_hidden, "batch_per_proc": args.batch, "seq": args.seq,
        "tokens_per_s_1": one["tokens_per_s"], f"tokens_per_s_{args.procs}": many["tokens_per_s"],
        "efficiency": many["tokens_per_s"] / (args.procs * one["tokens_per_s"]),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        from cortexmem.utils.io import atomic_write_json

        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
