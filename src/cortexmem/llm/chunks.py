"""What one chunk of ``MemoryLM.forward`` returns and how the chunks add up: ``CHUNK_STATS``, their running
``Totals`` (kept on the device) and the HF-style ``MemoryLMOutput``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor

#: what ``_chunk`` / ``_chunk_unscored`` return ahead of the flat memory state (one flat tuple of tensors, as
#: ``torch.utils.checkpoint`` needs): sums over the chunk's scored tokens, its logits (or a 0-d zero), gate sums
CHUNK_STATS = ("loss_sum", "count", "correct", "ok", "lm_sum", "lm_count", "logits", "gate_sums")


@dataclass
class Totals:
    """Sums over the chunks of one ``forward``, kept on the device (no host sync per chunk)."""

    loss_sum: Tensor
    lm_sum: Tensor
    gate_sums: Tensor
    count: Tensor
    correct: Tensor
    lm_count: Tensor
    ok: Tensor
    logits: list[Tensor]

    @classmethod
    def zeros(cls, ids: Tensor) -> Totals:
        f, n = ids.new_zeros((), dtype=torch.float32), torch.zeros((), dtype=torch.long, device=ids.device)
        return cls(f, f, f.new_zeros(2), n, n, n, torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device), [])

    def add(self, chunk: dict[str, Tensor], keep_logits: bool) -> None:
        """Add one chunk's ``CHUNK_STATS``."""
        self.loss_sum, self.lm_sum = self.loss_sum + chunk["loss_sum"], self.lm_sum + chunk["lm_sum"]
        self.gate_sums = self.gate_sums + chunk["gate_sums"]
        self.count, self.correct = self.count + chunk["count"], self.correct + chunk["correct"]
        self.lm_count, self.ok = self.lm_count + chunk["lm_count"], self.ok & chunk["ok"]
        if keep_logits:
            self.logits.append(chunk["logits"])


@dataclass
class MemoryLMOutput:
    """HF-style output: ``loss`` (mean over labelled tokens), ``logits``, final ``memory_state``."""

    loss: Tensor | None
    logits: Tensor | None
    memory_state: TensorDict
    num_label_tokens: int = 0
    exact_match: Tensor | None = None  # [B] bool: every labelled token predicted by argmax
    token_correct: int = 0
    lm_loss: Tensor | None = None  # mean next-token loss on ``lm_labels`` when given
    num_lm_tokens: int = 0
    write_gate_mean: Tensor | None = None  # mean write strength b inside ``write_mask`` (over layers)
    write_gate_mean_outside: Tensor | None = None  # ... and at every other position

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def score_chunk(logits: Tensor, tgt: Tensor | None, lm_tgt: Tensor | None, sums: Tensor | None,
                keep_logits: bool) -> tuple[Tensor, ...]:
    """One chunk's ``CHUNK_STATS`` from its logits ``[B, C, V]``, shifted targets and write-gate sums."""
    B = logits.shape[0]
    zero = logits.new_zeros((), dtype=torch.float32)
    if tgt is None:
        l_sum, cnt, corr = zero, zero.long(), zero.long()
        chunk_ok = torch.ones(B, dtype=torch.bool, device=logits.device)
    else:
        valid = tgt != -100
        lf = logits.float()
        l_sum = F.cross_entropy(lf.flatten(0, 1), tgt.flatten(), ignore_index=-100, reduction="sum")
        hit = (lf.argmax(-1) == tgt) & valid
        cnt, corr = valid.sum(), hit.sum()
        chunk_ok = (hit | ~valid).all(dim=1)
    lm_s, lm_c = zero, zero.long()
    if lm_tgt is not None:
        lm_s = F.cross_entropy(logits.float().flatten(0, 1), lm_tgt.flatten(), ignore_index=-100, reduction="sum")
        lm_c = (lm_tgt != -100).sum()
    kept = logits if keep_logits else zero
    ws = sums if sums is not None else zero.new_zeros(2)
    return (l_sum, cnt, corr, chunk_ok, lm_s, lm_c, kept, ws)


def add_gate_sums(sums: Tensor | None, b: Tensor, mask: Tensor) -> Tensor:
    """``sums + [sum(b * mask), sum(b * (1 - mask))]`` for ``b``, ``mask`` ``[B, T]``."""
    m = mask.to(b.dtype)
    new = torch.stack([(b * m).sum(), (b * (1 - m)).sum()])
    return new if sums is None else sums + new


def scored_chunks(T: int, C: int, *targets: Tensor | None) -> list[bool]:
    """Per chunk of ``C`` positions: does any row have a target there (one host sync for all chunks)."""
    n = -(-T // C)
    hit = None
    for t in targets:
        if t is not None:
            h = (t != -100).any(0)
            hit = h if hit is None else hit | h
    if hit is None:
        return [False] * n
    padded = hit.new_zeros(n * C)
    padded[:T] = hit
    return padded.view(n, C).any(1).tolist()


def shifted_targets(name: str, labels: Tensor | None, ids: Tensor) -> Tensor | None:
    """Next-token targets: position ``t`` predicts ``labels[t + 1]`` (``-100`` after the last position)."""
    if labels is None:
        return None
    if labels.shape != ids.shape:
        raise ValueError(f"{name} must have the shape of input_ids {tuple(ids.shape)}, got {tuple(labels.shape)}")
    labels = labels.to(ids.device)
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)


def as_input_ids(x: Any, tokenizer: Any, device: torch.device) -> Tensor:
    """``input_ids`` (a str with a tokenizer, or an integer tensor ``[T]`` / ``[B, T]``) as ``[B, T]`` longs."""
    if isinstance(x, str):
        if tokenizer is None:
            raise ValueError("text input needs a tokenizer (pass tokenizer= or load_with_memory)")
        ids = tokenizer.encode(x)
        x = torch.tensor(ids if isinstance(ids, list) else list(ids), dtype=torch.long)
    if not isinstance(x, Tensor):
        raise TypeError(f"input_ids must be a LongTensor [B, T] or [T] or a str, got {type(x).__name__}")
    if x.dtype not in (torch.long, torch.int32, torch.int64):
        raise TypeError(f"input_ids must be an integer tensor, got dtype {x.dtype}")
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(f"input_ids must be [B, T] with T >= 1, got shape {tuple(x.shape)}")
    return x.to(device, torch.long)


def check_write_mask(write_mask: Tensor | None, ids: Tensor, memory_mode: str, has_write_gates: bool
                     ) -> Tensor | None:
    """``write_mask`` checked against ``ids`` and the memory, as float32 ``[B, T]`` (None stays None)."""
    if write_mask is None:
        return None
    if not isinstance(write_mask, Tensor):
        raise TypeError(f"write_mask must be a tensor [B, T], got {type(write_mask).__name__}")
    if write_mask.shape != ids.shape:
        raise ValueError(f"write_mask must have shape {tuple(ids.shape)}, got {tuple(write_mask.shape)}")
    if memory_mode == "off":
        raise ValueError("write_mask needs the memory (memory_mode 'carry' or 'reset'), got 'off'")
    if not has_write_gates:
        raise ValueError("write_mask needs memory cells with a write gate (gated-delta / hybrid)")
    return write_mask.to(device=ids.device, dtype=torch.float32)
