"""Short recurrent-PPO runs on POPGym envs: return curves per stack, MMER and wall time (CPU, one thread).

    PYTHONPATH=src python benchmarks/rl_popgym_curves.py --env RepeatPreviousEasy --stacks lstm,conv_lstm \
        --frames 150000 --out runs/rl_popgym
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cortexmem.rl.ppo import PPOConfig, PPOTrainer, plot_returns
from cortexmem.utils.io import atomic_write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", required=True)
    p.add_argument("--stacks", default="lstm,conv_lstm")
    p.add_argument("--frames", type=int, default=150_000)
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--rollout-len", type=int, default=64)
    p.add_argument("--d-hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/rl_popgym"))
    args = p.parse_args()
    torch.set_num_threads(1)
    curves, rows = {}, []
    for stack in [s.strip() for s in args.stacks.split(",") if s.strip()]:
        cfg = PPOConfig(env=args.env, stack=stack, frames=args.frames, num_envs=args.num_envs,
                        rollout_len=args.rollout_len, d_hidden=args.d_hidden, lr=args.lr, seed=args.seed)
        out = args.out / f"{args.env}_{stack}"
        t0 = time.perf_counter()
        trainer = PPOTrainer(cfg, out)
        summary = trainer.train(progress=False)
        seconds = time.perf_counter() - t0
        params = sum(p.numel() for p in trainer.policy.parameters())
        rows.append({**summary, "seconds": seconds, "params": params})
        curves[stack] = trainer.history
        print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{args.env}_summary.json", rows)
    plot_returns(curves, args.out / f"{args.env}_returns.png", title=f"{args.env} (PPO, CPU)")
    for r in rows:
        print(f"{r['env']:28s} {r['stack']:10s} MMER {r['mmer']:+.3f}  final {r['final_mean_return']:+.3f}  "
              f"{r['frames']} frames in {r['seconds']:.0f} s  ({r['params']} params)")


if __name__ == "__main__":
    main()
