"""``MemoryLM.generate``: HF generation with the memory read in the hooks and the session advanced."""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor


class StopForward(Exception):
    """Raised by the last memory hook during ingestion: layers above it cannot change the memory state."""


class GenerationMixin:
    """``generate`` for :class:`~cortexmem.llm.attach.MemoryLM` (kept apart from the chunked forward)."""

    @torch.no_grad()
    def generate(self, input_ids: Any, session_id: str | None = None, *, state: TensorDict | None = None,
                 reset_session: bool = False, attention_mask: Tensor | None = None, tokenizer: Any = None,
                 **generate_kwargs: Any) -> Any:
        """HF ``generate`` with the memory read in the hooks; the session is advanced past every token.

        A prompt longer than ``chunk_size`` is ingested chunk by chunk and only its last (partial) chunk goes to
        the base model's ``generate``, matching how ``forward`` chunks text. Returns what HF returns, with the
        full prompt in ``sequences``.
        """
        if generate_kwargs.get("num_beams", 1) != 1:
            raise ValueError("beam search is not supported: beams reorder rows the memory state cannot follow")
        nrs = generate_kwargs.get("num_return_sequences", 1)
        if nrs != 1 and session_id is not None:
            raise ValueError(f"num_return_sequences={nrs} with a session: which continuation to keep is ambiguous")
        ids = self._ids(input_ids, tokenizer)
        B, L = ids.shape
        st, seen, version = self._start(session_id, state, reset_session, B)
        C = self.config.chunk_size
        cut = ((L - 1) // C) * C
        if cut:
            st = self._ingest(ids[:, :cut], st)
        tail = ids[:, cut:]
        mask = attention_mask[:, cut:].to(self.device) if attention_mask is not None else torch.ones_like(tail)
        want_dict = generate_kwargs.pop("return_dict_in_generate", False)
        with self._running(st) as run:
            out = self.base.generate(tail, attention_mask=mask, return_dict_in_generate=True, **generate_kwargs)
            seqs = out.sequences
            n_new = seqs.shape[1] - tail.shape[1]
            pkv = getattr(out, "past_key_values", None)
            if n_new > 0 and pkv is not None:
                # generate never feeds its last sampled token back; do it so the memory has seen every token
                run.stop_after = self.layer_ids[-1]
                full_mask = torch.cat([mask, mask.new_ones(seqs.shape[0], n_new)], dim=1)
                try:
                    self.base(input_ids=seqs[:, -1:], past_key_values=pkv, attention_mask=full_mask, use_cache=True)
                except StopForward:
                    pass
            final = self._pack(run, seqs.shape[0])
        if n_new > 0 and pkv is None:
            # no cache to continue from (use_cache=False): replay prompt tail + answer from the pre-call state
            final = self._advance(seqs, st)
        self._finish(session_id, final, seen + L + n_new, version)
        full = torch.cat([ids[:, :cut].repeat_interleave(seqs.shape[0] // B, dim=0), seqs], dim=1)
        if not want_dict:
            return full
        out.sequences = full
        return out
