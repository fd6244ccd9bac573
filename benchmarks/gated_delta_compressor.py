"""What the write compressor does: a tiny GatedDeltaCell model trained on associative recall with distractors.

Each sequence holds N (key, value) token pairs at random positions among filler tokens, then every key once
more as a query; the loss is on the query positions only (predict the key's value). The same model is trained
with ``compressor="none"`` and ``compressor="linear"`` (k, v from a ``rank``-dim bottleneck, per-token write
strength). Reported: query accuracy, parameters, and the mean effective write strength ``b`` (compressor
included) on key, value and filler tokens, i.e. how selectively the memory is written.

Run: ``PYTHONPATH=src python benchmarks/gated_delta_compressor.py [--steps 1200] [--rank 8]``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from cortexmem import GatedDeltaCellConfig, build_cell

KEYS, VALUES, FILLERS = 16, 16, 8  # token ids: keys, then values, then fillers


def batch(B: int, N: int, L: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> tokens ``[B, L + N]``, targets ``[B, L + N]`` (-1 where no loss), token kind ``[B, L + N]``."""
    tokens = KEYS + VALUES + torch.randint(FILLERS, (B, L), generator=gen)
    kind = torch.full((B, L + N), 2)  # 0 key, 1 value, 2 filler, 3 query
    targets = torch.full((B, L + N), -1)
    keys = torch.stack([torch.randperm(KEYS, generator=gen)[:N] for _ in range(B)])
    values = KEYS + torch.randint(VALUES, (B, N), generator=gen)
    for b in range(B):
        slots = torch.randperm(L // 2, generator=gen)[:N].sort().values * 2  # pair (2s, 2s + 1)
        tokens[b, slots], tokens[b, slots + 1] = keys[b], values[b]
        kind[b, slots], kind[b, slots + 1] = 0, 1
    order = torch.stack([torch.randperm(N, generator=gen) for _ in range(B)])
    tokens = torch.cat([tokens, keys.gather(1, order)], dim=1)
    targets[:, L:] = values.gather(1, order) - KEYS
    kind[:, L:] = 3
    return tokens, targets, kind


class Model(nn.Module):
    def __init__(self, hidden: int, compressor: str, rank: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(KEYS + VALUES + FILLERS, hidden)
        self.cell = build_cell(GatedDeltaCellConfig(hidden_size=hidden, num_heads=2, chunk_size=16,
                                                    compressor=compressor, rank=rank))
        self.head = nn.Linear(hidden, VALUES)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(tokens)
        y, _ = self.cell(x)
        return self.head(x + y), self.cell.write_gates(x)[1].mean(-1)


def run(compressor: str, args: argparse.Namespace) -> list[str]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = Model(args.hidden, compressor, args.rank)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    for _ in range(args.steps):
        tokens, targets, _ = batch(args.batch, args.pairs, args.length, gen)
        logits, _ = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        tokens, targets, kind = batch(512, args.pairs, args.length, torch.Generator().manual_seed(2))
        logits, strength = model(tokens)
        q = targets >= 0
        acc = (logits.argmax(-1)[q] == targets[q]).double().mean().item()
        mean_b = [strength[kind == i].mean().item() for i in range(3)]
    n_params = sum(p.numel() for p in model.cell.parameters())
    return [compressor, str(n_params), f"{acc:.3f}", *(f"{b:.3f}" for b in mean_b)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--length", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    table = Table(title=f"assoc. recall with fillers: {args.pairs} pairs in {args.length} tokens, hidden "
                        f"{args.hidden}, rank {args.rank}, {args.steps} steps (chance {1 / VALUES:.3f})")
    for col in ("compressor", "cell params", "query acc", "b on keys", "b on values", "b on fillers"):
        table.add_column(col, justify="right")
    for compressor in ("none", "linear"):
        table.add_row(*run(compressor, args))
    Console().print(table)


if __name__ == "__main__":
    main()
