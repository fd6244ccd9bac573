"""Associative-recall capacity of one memory head: gated delta rule vs a plain linear-attention write.

N random (key, value) pairs (unit keys in ``Dk`` dims, Gaussian values in ``Dv = Dk`` dims) are written into
one head, one token at a time, without decay (``a = 1``) and with ``b = 1``; then every key is the query.
The delta rule writes ``S <- S + k (v - S^T k)^T`` (through :func:`chunk_gated_delta_rule`); linear attention
writes ``S <- S + k v^T``. Key sets:

* ``iso``: isotropic unit keys;
* ``shared``: keys with a common direction, ``k = normalize(m + u)`` (pairwise cosine about 0.5), as real
  token keys have;
* ``update``: isotropic keys, then the first half of them is written again with new values; the target is the
  newest value (state tracking / overwriting).

Reported per (keys, Dk, N): recall@1 (the read-out is closest, in cosine, to its target among all the values
ever written, overwritten ones included) and the mean relative error ``|S^T k_i - target_i| / |target_i|``,
averaged over trials.

Run: ``PYTHONPATH=src python benchmarks/gated_delta_capacity.py [--trials 8] [--dims 16 32 64 128]``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from cortexmem.ops.gated_delta import chunk_gated_delta_rule


def recall(read: torch.Tensor, written: torch.Tensor, target_idx: torch.Tensor) -> tuple[float, float]:
    """``read [trials, N, Dv]``, ``written [trials, L, Dv]``, ``target_idx [N]`` -> (recall@1, rel. error)."""
    sims = F.normalize(read, dim=-1) @ F.normalize(written, dim=-1).transpose(-1, -2)  # (trials, N, L)
    hit = sims.argmax(-1) == target_idx
    targets = written[:, target_idx]
    err = (read - targets).norm(dim=-1) / targets.norm(dim=-1)
    return hit.double().mean().item(), err.mean().item()


def write(keys: torch.Tensor, values: torch.Tensor, rule: str) -> torch.Tensor:
    """Write the sequence ``keys [trials, L, Dk] -> values [trials, L, Dv]`` into one head; return ``S``."""
    if rule == "linear":
        return keys.transpose(-1, -2) @ values  # sum_i k_i v_i^T
    ones = torch.ones(*keys.shape[:2], 1, dtype=keys.dtype)
    k, v = keys[:, :, None], values[:, :, None]
    _, S = chunk_gated_delta_rule(k, k, v, torch.zeros_like(ones), ones, chunk_size=64)
    return S[:, 0]


def task(kind: str, trials: int, N: int, Dk: int) -> tuple[torch.Tensor, ...]:
    """-> (written keys, written values [trials, L, Dk], query keys [trials, N, Dk], target index [N])."""
    keys = F.normalize(torch.randn(trials, N, Dk, dtype=torch.float64), dim=-1)
    if kind == "shared":
        shared = F.normalize(torch.randn(trials, 1, Dk, dtype=torch.float64), dim=-1)
        keys = F.normalize(keys + shared, dim=-1)
    values = torch.randn(trials, N, Dk, dtype=torch.float64)
    if kind != "update":
        return keys, values, keys, torch.arange(N)
    half = max(1, N // 2)
    new = torch.randn(trials, half, Dk, dtype=torch.float64)
    target_idx = torch.cat([torch.arange(N, N + half), torch.arange(half, N)])  # newest value of each key
    return torch.cat([keys, keys[:, :half]], 1), torch.cat([values, new], 1), keys, target_idx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--dims", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--keys", nargs="+", default=["iso", "shared", "update"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    table = Table(title=f"recall of N pairs from one head (a = 1, b = 1, {args.trials} trials)")
    for col in ("keys", "Dk", "N", "N/Dk", "delta recall@1", "linear recall@1", "delta err", "linear err"):
        table.add_column(col, justify="right")
    for kind in args.keys:
        for Dk in args.dims:
            for ratio in args.ratios:
                N = max(1, int(round(ratio * Dk)))
                wk, wv, qk, idx = task(kind, args.trials, N, Dk)
                d_hit, d_err = recall(qk @ write(wk, wv, "delta"), wv, idx)
                l_hit, l_err = recall(qk @ write(wk, wv, "linear"), wv, idx)
                table.add_row(kind, str(Dk), str(N), f"{ratio:g}", f"{d_hit:.3f}", f"{l_hit:.3f}",
                              f"{d_err:.3f}", f"{l_err:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
