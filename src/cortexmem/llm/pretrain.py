"""``pretrain_base``: a small causal LM trained on generated text, so NIAH runs offline with a frozen base.

The corpus mixes filler prose with "secret code" facts and in-context questions about them, so the base model
learns the answer format and copying within its window; across windows it has no way to answer, which is
what the memory sidecar adds.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from ..utils.io import atomic_write_json
from ..utils.schedule import warmup_cosine
from .niah import plain_document
from .tokenizer import CharTokenizer

log = logging.getLogger(__name__)

ARCHS = ("llama", "qwen2", "gpt2")


def pretrain_document(rng: random.Random, n_chars: int, digits: int = 6) -> str:
    """Filler with a few facts and questions answered from facts earlier in the same document (train names)."""
    return plain_document(rng, n_chars, digits, "train")


def build_base_config(arch: str, vocab_size: int, hidden: int, layers: int, heads: int, max_len: int) -> Any:
    """A transformers config for a small model of the given architecture."""
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden,
                           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                           max_position_embeddings=max_len, tie_word_embeddings=True, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2)
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden,
                           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                           max_position_embeddings=max_len, tie_word_embeddings=True, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2)
    if arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_len,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def pretrain_base(out_dir: str | Path, *, arch: str = "llama", hidden: int = 256, layers: int = 4, heads: int = 4,
                  seq_len: int = 512, steps: int = 2000, batch_size: int = 16, lr: float = 1e-3, seed: int = 0,
                  device: str | None = None, progress: bool = True,
                  time_limit_s: float | None = None) -> dict[str, Any]:
    """Train and save (``save_pretrained`` + tokenizer) a small base LM; returns the loss history.

    ``time_limit_s`` stops early (the model is still saved; ``steps_done`` says how far it got).
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tok = CharTokenizer()
    cfg = build_base_config(arch, tok.vocab_size, hidden, layers, heads, max(2 * seq_len, 1024))
    model = AutoModelForCausalLM.from_config(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(1, steps // 20)
    losses: list[float] = []
    bar = None
    if progress:
        from ..utils.progress import make_progress

        bar = make_progress()
        bar.start()
        tid = bar.add_task("pretrain-base", total=steps)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        rng = random.Random(seed * 1_000_003 + step)
        docs = [tok.encode(pretrain_document(rng, seq_len), add_special_tokens=True)[: seq_len] for _ in
                range(batch_size)]
        ids = torch.tensor(docs, device=dev)
        progress = (time.perf_counter() - t0) / time_limit_s if time_limit_s else 0.0  # anneal by the clock too
        for g in opt.param_groups:
            g["lr"] = lr * warmup_cosine(step, steps, warm, progress=progress)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if bar:
            bar.update(tid, advance=1, description=f"pretrain-base loss {losses[-1]:.3f}")
        if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
            log.info("pretrain-base: time limit %.0f s reached after step %d", time_limit_s, step + 1)
            break
    if bar:
        bar.stop()
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save(out)
    summary = {"arch": arch, "hidden": hidden, "layers": layers, "heads": heads, "seq_len": seq_len, "steps": steps,
               "steps_done": len(losses),
               "final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": time.perf_counter() - t0,
               "losses": losses}
    atomic_write_json(out / "pretrain.json", summary)
    return summary
