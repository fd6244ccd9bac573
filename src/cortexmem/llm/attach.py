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
from tensordict import TensorDict
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .adapter import SidecarMemory
from .base import base_fingerprint, find_decoder_layers, model_width
from .chunks import (
    CHUNK_STATS,
    MemoryLMOutput,
    Totals,
    add_gate_sums,
    as_input_ids,
    check_write_mask,
    score_chunk,
    scored_chunks,
    shifted_targets,
)
from .config import MemoryConfig
from .generation import GenerationMixin, StopForward
from .sessions import Fingerprint, SessionStore, tensor_digest


@dataclass
class _Run:
    """Mutable per-call context the hooks read and update."""

    state: dict[str, TensorDict]
    stop_after: int | None = None
    embeds: Tensor | None = None  # token embeddings of the current call (``read_from="embeddings"``)
    write_mask: Tensor | None = None  # [B, T] float: where to sum the write strength b
    write_sums: Tensor | None = None  # [2]: sum of b inside / outside write_mask


class MemoryLM(GenerationMixin, nn.Module):
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
            h_new, run.state[key], b = adapter.read_write(h, state, src, want_gates=run.write_mask is not None)
            if b is not None:
                run.write_sums = add_gate_sums(run.write_sums, b, run.write_mask)
            if run.stop_after == idx:
                raise StopForward
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
        return as_input_ids(x, tokenizer or self.tokenizer, self.device)

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
                    sums = add_gate_sums(sums, b, write_mask)
            return TensorDict(new, batch_size=[B]), sums
        with self._running(state, stop_after=self.layer_ids[-1], write_mask=write_mask) as run:
            try:
                self.base(input_ids=ids, attention_mask=mask, use_cache=False)
            except StopForward:
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
        targets = shifted_targets("labels", labels, ids)
        lm_targets = shifted_targets("lm_labels", lm_labels, ids)
        if attention_mask is not None and attention_mask.shape != ids.shape:
            raise ValueError(f"attention_mask must have shape {tuple(ids.shape)}, got {tuple(attention_mask.shape)}")
        wmask = check_write_mask(write_mask, ids, memory_mode, self.has_write_gates)
        st, seen, version = self._start(session_id, state, reset_session, B)
        keys = sorted(st.flatten_keys(".").keys())
        flat = [st.flatten_keys(".")[k] for k in keys]
        fresh = list(flat)
        C = self.config.chunk_size
        n_chunks = -(-T // C)
        scored = [True] * n_chunks
        if fast_unscored and not return_logits:
            scored = scored_chunks(T, C, targets, lm_targets)
        totals = Totals.zeros(ids)
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
        return (*score_chunk(out.logits, tgt, lm_tgt, sums, return_logits), *[new[k] for k in keys])

    # --- adapter files --------------------------------------------------------------------------
    def save_memory(self, directory: str | Path) -> Path:
        """Write only the sidecar: ``memory_config.json`` + ``memory.safetensors``."""
        return self.memory.save(directory, self._base_fp, getattr(self.base.config, "_name_or_path", ""))

    def load_memory(self, directory: str | Path, *, strict_base: bool = True) -> MemoryLM:
        """Load sidecar weights written by ``save_memory`` (the same base model is checked)."""
        self.memory.load(directory, self._base_fp if strict_base else None)
        return self


def attach_memory(model: nn.Module, cfg: MemoryConfig | None = None, **kwargs: Any) -> MemoryLM:
    """Wrap ``model`` (frozen in place, not copied) with a memory sidecar."""
    return MemoryLM(model, cfg, **kwargs)


def __getattr__(name: str) -> Any:  # loaders moved to cortexmem.llm.load; import them from cortexmem.llm
    if name in ("load_with_memory", "load_qwen_with_cortex"):
        import warnings

        from . import load

        warnings.warn(f"cortexmem.llm.attach.{name} moved to cortexmem.llm.{name}", DeprecationWarning, stacklevel=2)
        return getattr(load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
