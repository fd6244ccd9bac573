"""Sampling from a CortexLM: temperature, top-k, top-p (temperature 0 = greedy); memory is read every step."""

from __future__ import annotations

import torch
from torch import Tensor

from .model import CortexLM


def filter_logits(logits: Tensor, *, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Keep the ``top_k`` largest logits and the smallest set with cumulative probability >= ``top_p``."""
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logits = logits.clone()
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k).values[-1]
        logits[logits < kth] = -float("inf")
    if top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # tokens entirely beyond the nucleus
        logits[order[drop]] = -float("inf")
    return logits


@torch.no_grad()
def generate_ids(
    model: CortexLM,
    ids: list[int],
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_at_eos: bool = True,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Continue ``ids``; returns only the new tokens."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not ids:
        raise ValueError("generate needs a non-empty prompt")
    was_training = model.training
    model.eval()
    eos = model.tokenizer.eos_id if model.tokenizer is not None else None
    out: list[int] = []
    try:
        for _ in range(max_new_tokens):
            logits, _ = model.next_logits(ids + out)
            if temperature == 0:
                nxt = int(logits.argmax())
            else:
                probs = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p).softmax(-1)
                nxt = int(torch.multinomial(probs.cpu(), 1, generator=generator))
            if stop_at_eos and nxt == eos:
                break
            out.append(nxt)
    finally:
        model.train(was_training)
    return out


def generate(model: CortexLM, prompt: str, **kwargs) -> str:
    """Text in, continuation text out (needs ``model.tokenizer``)."""
    if model.tokenizer is None:
        raise ValueError("generate(prompt: str) needs a model with a tokenizer; use generate_ids")
    return model.tokenizer.decode(generate_ids(model, model.tokenizer.encode(prompt), **kwargs))
