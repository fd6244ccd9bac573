"""CPU demo of ``cortexmem.lm``: train on the generated corpus, print loss vs steps, then teach facts with learn().

PYTHONPATH=src python examples/lm_demo.py --steps 300 --out /tmp/lm_demo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cortexmem.lm.data import demo_corpus, prepare, val_path_for, write_demo_data
from cortexmem.lm.generate import generate
from cortexmem.lm.tokenizer import train_bpe
from cortexmem.lm.train import TrainConfig, Trainer

FACTS = {"The capital of Zorbia is": " Quxi", "The capital of Vantor is": " Teslin"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/lm_demo")
    ap.add_argument("--docs", type=int, default=1500)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    write_demo_data(out / "demo.jsonl", args.docs)
    tok = train_bpe(demo_corpus(args.docs), 512)
    tok.save(out / "tok")
    rep = prepare(out / "demo.jsonl", out / "train.bin", tok)
    print(f"corpus: {rep.docs} docs, {rep.train_tokens} train / {rep.val_tokens} val tokens, vocab {tok.vocab_size}")
    cfg = TrainConfig(
        train_data=str(out / "train.bin"),
        val_data=str(val_path_for(out / "train.bin")),
        tokenizer=str(out / "tok"),
        checkpoint_dir=str(out / "ck"),
        dim=64,
        n_layers=2,
        n_heads=4,
        seq_len=48,
        batch_size=16,
        max_steps=args.steps,
        lr=3e-3,
        save_every=10_000,
    )
    tr = Trainer(cfg, device="cpu")
    t0 = time.perf_counter()
    hist = tr.fit()
    secs = time.perf_counter() - t0
    n_params = sum(p.numel() for p in tr.model.parameters())
    print(f"trained {n_params} params for {args.steps} steps in {secs:.1f} s (1 CPU thread)")
    print("step  train_loss(in-batch memory)")
    for h in hist:
        if h["step"] % args.every == 0 or h["step"] == len(hist) - 1:
            print(f"{h['step']:4d}  {h['loss']:.3f}")
    print(
        f"val loss at end: {tr.evaluate():.3f} with the in-batch memory bank, "
        f"{tr.evaluate(memory=False):.3f} without memory"
    )
    model = tr.model.eval()
    before = {p: generate(model, p, max_new_tokens=5) for p in FACTS}
    for p, a in FACTS.items():
        model.learn(p + a + ".")
    after = {p: generate(model, p, max_new_tokens=5) for p in FACTS}
    for p, a in FACTS.items():
        ok = after[p].startswith(a) and a.strip() not in before[p]
        print(f"{p!r}: before learn -> {before[p]!r}; after -> {after[p]!r}  [{'OK' if ok else 'FAIL'}]")
    print(
        "control 'The river of Zorbia is the' ->", repr(generate(model, "The river of Zorbia is the", max_new_tokens=5))
    )
    print(json.dumps(model.get_stats(), indent=1))


if __name__ == "__main__":
    main()
