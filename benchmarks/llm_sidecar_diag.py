"""Why a memory sidecar does or does not learn NIAH retrieval: three checks on a frozen base, no training.

1. ``grads``: gradient norm of the answer loss per sidecar parameter (gate opened to ``--gate``), with full BPTT
   and with the state detached after every chunk (the difference is what earlier chunks contribute).
2. ``keys``: cosine between the query at the answer position and the key written at the needle's first digit,
   the mean cosine to every other key, and the needle key's rank (0 = best match).
3. ``probe``: held-out accuracy of a logistic-regression probe that reads the needle's first digit from the
   memory read at the answer position (information present at init, whatever the read-out has learned).

    PYTHONPATH=src python benchmarks/llm_sidecar_diag.py --base runs/llm_bench/base --length 512 --chunk 128
"""

from __future__ import annotations

import argparse
import json
import random

import torch
import torch.nn.functional as F

from cortexmem.llm import MemoryConfig, TextNiah, load_with_memory


def build(args) -> tuple:
    cfg = MemoryConfig(chunk_size=args.chunk, use_hybrid=False, compressor="none", num_heads=args.heads,
                       head_dim=args.head_dim, alpha_max=1.0, decay_init=1e-6, write_init=0.05,
                       layers="auto" if args.layers == "auto" else [int(x) for x in args.layers.split(",")],
                       read_from=args.read_from, conv_kernel=args.conv_kernel, induction_init=args.induction,
                       zero_init=args.zero_init)
    torch.manual_seed(0)
    mlm = load_with_memory(args.base, cfg)
    return mlm, TextNiah(mlm.tokenizer, digits=1, n_distractors=args.distractors)


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Index of the first answer token (the position whose next token is the first digit... minus one)."""
    return (labels != -100).float().argmax(1)


def grad_norms(mlm, task, args) -> dict:
    ids, labels, _ = task.batch(random.Random(0), args.batch, args.length, (0.0, 0.3), "train")
    adapter = next(iter(mlm.memory.adapters.values()))
    with torch.no_grad():
        adapter.gate.fill_(args.gate)
        adapter.up.weight.normal_(0.0, adapter.up.in_features ** -0.5)
    out = {}
    for name, bptt in (("full_bptt", None), ("detached_each_chunk", 1)):
        mlm.zero_grad(set_to_none=True)
        mlm(ids, labels=labels, return_logits=False, bptt_chunks=bptt).loss.backward()
        out[name] = {n.split(".", 2)[-1]: float(p.grad.norm()) for n, p in mlm.memory.named_parameters()
                     if p.grad is not None}
    return out


def _capture(cell):
    """Patch ``cell`` to record its memory reads and q/k; returns the lists it fills."""
    got = {"o": [], "q": [], "k": []}
    mem, qkv = cell.memory, cell.qkv

    def memory(*a, **kw):
        o, S = mem(*a, **kw)
        got["o"].append(o)
        return o, S

    def qkv_rec(*a, **kw):
        q, k, v, c = qkv(*a, **kw)
        got["q"].append(q)
        got["k"].append(k)
        return q, k, v, c

    cell.memory, cell.qkv = memory, qkv_rec
    return got


def digit_index(tok, ids_row: torch.Tensor, needle_pos: int) -> int:
    return needle_pos + tok.decode(ids_row[needle_pos:].tolist()).index(" is ") + 4


def keys_and_probe(mlm, task, args) -> dict:
    tok = mlm.tokenizer
    cell = next(iter(mlm.memory.adapters.values())).cell
    feats, ys, cos = [], [], []
    for rep in range(args.probe_batches):
        got = _capture(cell)
        ids, labels, samples = task.batch(random.Random(100 + rep), args.batch, args.length, (0.0, 0.3), "train")
        with torch.no_grad():
            mlm(ids, return_logits=False)
        del cell.memory, cell.qkv  # drop the instance patches
        ans = answer_positions(labels)
        o = torch.cat(got["o"], 1).flatten(2)
        q = F.normalize(torch.cat(got["q"], 1), dim=-1).flatten(2)
        k = F.normalize(torch.cat(got["k"], 1), dim=-1).flatten(2)
        rows = torch.arange(ids.shape[0])
        feats.append(F.normalize(o[rows, ans], dim=-1))
        ys.append(torch.tensor([int(tok.decode([int(ids[i, ans[i] + 1])])) for i in rows]))
        if rep == 0:
            for i in range(min(8, len(samples))):
                a, t = int(ans[i]), digit_index(tok, ids[i], samples[i].needle_pos)
                c = k[i, :a] @ q[i, a]
                cos.append((float(c[t]), float(c.mean()), int((c > c[t]).sum())))
    X, Y = torch.cat(feats), torch.cat(ys)
    n_tr = int(0.8 * len(Y))
    mu, sd = X[:n_tr].mean(0), X[:n_tr].std(0) + 1e-6
    Xtr, Xte = (X[:n_tr] - mu) / sd, (X[n_tr:] - mu) / sd
    W = torch.zeros(X.shape[1], 10, requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=1e-2)
    for _ in range(500):
        loss = F.cross_entropy(Xtr @ W + b, Y[:n_tr]) + 1e-3 * W.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = float(((Xte @ W + b).argmax(1) == Y[n_tr:]).float().mean())
    return {"cos_needle": [c[0] for c in cos], "mean_cos_other": [c[1] for c in cos],
            "needle_key_rank": [c[2] for c in cos], "probe_heldout_acc": acc, "probe_chance": 0.1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="HF folder with a tokenizer (e.g. from pretrain-base)")
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--probe-batches", type=int, default=6)
    p.add_argument("--distractors", type=int, default=0)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--layers", default="-1")
    p.add_argument("--read-from", default="embeddings", choices=["embeddings", "residual"])
    p.add_argument("--conv-kernel", type=int, default=16)
    p.add_argument("--induction", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--zero-init", default="up", choices=["up", "gate"])
    p.add_argument("--gate", type=float, default=0.1, help="gate value (and random up) for the gradient check")
    p.add_argument("--checks", default="grads,keys")
    args = p.parse_args()
    torch.set_num_threads(1)
    report = {}
    checks = set(args.checks.split(","))
    if "keys" in checks:
        mlm, task = build(args)
        report["keys_and_probe"] = keys_and_probe(mlm, task, args)
    if "grads" in checks:
        mlm, task = build(args)
        report["grads"] = grad_norms(mlm, task, args)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
