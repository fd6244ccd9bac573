"""CortexLM: embedding -> causal transformer (+ optional cortex blocks) -> memory read -> LM head.

The memory read is a gated cross-attention over entries retrieved from the STM/LTM/Archive hierarchy. An
entry's key is the (L2-normalised) query projection of the context at position t, its value the embedding
of the token that followed; retrieved keys/values carry no gradient (stop-grad), the gate sees the best
match score and is sharpened by ``gate_temperature``. Training teaches the read with an in-batch episodic
bank (a random subset of the batch rows is "already remembered"), so the model learns to copy from memory
only when a match is close.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from ..blocks.base import BlockConfig, build_block
from ..core.config import TaggedConfig, polymorphic
from ..utils.io import (
    CheckpointError,
    CheckpointNotFoundError,
    atomic_save_safetensors,
    atomic_write_json,
    load_weights_file,
    read_versioned,
    validate_config,
)
from .memory import MemorySystem, MemorySystemConfig
from .tokenizer import LMTokenizer, load_tokenizer

MODEL_FORMAT = "cortexmem.lm.model"
MODEL_VERSION = 1


class LMConfig(TaggedConfig):
    """Sizes of the LM, its memory read and fast weights."""

    vocab_size: int = Field(ge=2)
    dim: int = Field(default=64, ge=4)
    n_layers: int = Field(default=2, ge=1)
    n_heads: int = Field(default=4, ge=1)
    ffn_mult: float = Field(default=4.0, gt=0)
    max_seq_len: int = Field(default=128, ge=2)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    cortex_blocks: list[polymorphic(BlockConfig)] = Field(default_factory=list)
    cortex_every: int = Field(default=1, ge=1, description="insert the next cortex block after every N layers")
    mem_key_dim: int = Field(default=64, ge=1)
    mem_top_k: int = Field(default=4, ge=1)
    gate_temperature: float = Field(default=1.0, gt=0)
    mem_train_fraction: float = Field(default=0.5, ge=0, le=1)
    fast_rank: int = Field(default=8, ge=1)
    fast_lr: float = Field(default=0.05, gt=0)
    fast_steps: int = Field(default=0, ge=0, description="gradient steps on fast weights per learn() call")
    memory: MemorySystemConfig = Field(default_factory=MemorySystemConfig)

    @model_validator(mode="after")
    def _heads_divide(self) -> LMConfig:
        if self.dim % self.n_heads:
            raise ValueError(f"dim must be divisible by n_heads, got dim={self.dim}, n_heads={self.n_heads}")
        return self


class TransformerLayer(nn.Module):
    """Pre-norm causal self-attention + GELU MLP."""

    def __init__(self, dim: int, n_heads: int, ffn_mult: float, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = max(1, int(ffn_mult * dim))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.norm2(x))


class MemoryRead(nn.Module):
    """Gated cross-attention from hidden states to retrieved (stop-grad) memory keys/values."""

    def __init__(self, dim: int, key_dim: int, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.norm = nn.LayerNorm(dim)
        self.value_norm = nn.LayerNorm(dim)  # token embeddings are tiny at init; read them at unit scale
        self.query = nn.Linear(dim, key_dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.gate = nn.Linear(dim, 1)
        # start as "copy the retrieved token" so training refines the read rather than discovering it
        nn.init.eye_(self.value.weight)
        nn.init.eye_(self.out.weight)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        # the gate opens only above a (learned) match threshold: near-exact context = a remembered fact
        self.score_gain = nn.Parameter(torch.tensor(40.0))
        self.score_threshold = nn.Parameter(torch.tensor(0.9))
        self.log_beta = nn.Parameter(torch.tensor(math.log(10.0)))

    def queries(self, h: Tensor) -> Tensor:
        """``h [..., dim] -> unit-norm queries [..., key_dim]`` (also the keys written to memory)."""
        return F.normalize(self.query(self.norm(h)), dim=-1)

    def forward(self, h: Tensor, q: Tensor, keys: Tensor, values: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """``h [B,T,D], q [B,T,dk], keys [B,T,k,dk], values [B,T,k,D], valid [B,T,k]`` -> ``(h', g [B,T])``"""
        keys, values = keys.detach(), values.detach()
        scores = (q.unsqueeze(-2) * keys).sum(-1).masked_fill(~valid, -1e4)  # [B,T,k]
        w = torch.softmax(self.log_beta.exp() * scores, dim=-1)
        o = (w.unsqueeze(-1) * self.value(self.value_norm(values))).sum(-2)
        any_valid = valid.any(-1)
        best = torch.where(any_valid, scores.max(-1).values, torch.zeros_like(scores[..., 0]))
        logit = self.gate(self.norm(h)).squeeze(-1) + self.score_gain * (best - self.score_threshold)
        g = torch.sigmoid(logit / self.temperature) * any_valid.to(h.dtype)
        return h + g.unsqueeze(-1) * self.out(o), g


class CortexLM(nn.Module):
    """Small LM with an STM -> LTM -> Archive memory it writes to while it runs (``learn``)."""

    def __init__(self, config: LMConfig, tokenizer: LMTokenizer | None = None) -> None:
        super().__init__()
        if not isinstance(config, LMConfig):
            raise TypeError(f"CortexLM expects an LMConfig, got {type(config).__name__}")
        if tokenizer is not None and tokenizer.vocab_size != config.vocab_size:
            raise ValueError(f"tokenizer vocab {tokenizer.vocab_size} != config.vocab_size {config.vocab_size}")
        mem_cfg = config.memory.model_copy(update={"key_dim": config.mem_key_dim, "value_dim": config.dim})
        self.config = config.model_copy(update={"memory": mem_cfg})
        self.tokenizer = tokenizer
        c = self.config
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.pos = nn.Embedding(c.max_seq_len, c.dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.layers = nn.ModuleList()
        cortex = list(c.cortex_blocks)
        for i in range(c.n_layers):
            self.layers.append(TransformerLayer(c.dim, c.n_heads, c.ffn_mult, c.dropout))
            if cortex and (i + 1) % c.cortex_every == 0:
                self.layers.append(build_block(cortex.pop(0), c.dim))
        self.layers.extend(build_block(b, c.dim) for b in cortex)
        self.read = MemoryRead(c.dim, c.mem_key_dim, c.gate_temperature)
        self.fast_a = nn.Linear(c.dim, c.fast_rank, bias=False)
        self.fast_b = nn.Linear(c.fast_rank, c.dim, bias=False)
        nn.init.zeros_(self.fast_b.weight)  # fast weights start as a no-op and only change in learn()
        self.norm = nn.LayerNorm(c.dim)
        self.memory = MemorySystem(c.memory)

    # ---- core
    def fast_parameters(self) -> list[nn.Parameter]:
        return [self.fast_a.weight, self.fast_b.weight]

    def slow_parameters(self) -> list[nn.Parameter]:
        fast = {id(p) for p in self.fast_parameters()}
        return [p for p in self.parameters() if id(p) not in fast]

    def hidden(self, idx: Tensor) -> Tensor:
        """Token ids ``[B, T]`` -> hidden states ``[B, T, dim]`` before the memory read."""
        if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            got = f"{tuple(idx.shape)} {idx.dtype}" if isinstance(idx, Tensor) else type(idx).__name__
            raise ValueError(f"idx must be an integer tensor [B, T], got {got}")
        B, T = idx.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.config.max_seq_len}")
        h = self.embed(idx) + self.pos(torch.arange(T, device=idx.device))
        for layer in self.layers:
            if isinstance(layer, TransformerLayer):
                h = layer(h)
            else:
                h, _ = layer.forward_sequence(h, layer.init_state(B, device=h.device, dtype=h.dtype), None)
        return h

    def head(self, h: Tensor) -> Tensor:
        h = h + self.fast_b(self.fast_a(h))
        return self.norm(h) @ self.embed.weight.T

    def forward(self, idx: Tensor, targets: Tensor | None = None, *, bank: bool = True) -> tuple[Tensor, Tensor | None]:
        """Training forward: logits ``[B,T,V]``, mean CE; the read uses an in-batch bank from ``targets``."""
        h = self.hidden(idx)
        if bank and targets is not None and self.config.mem_train_fraction > 0:
            h = self._bank_read(h, targets)
        logits = self.head(h)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss

    def _bank_read(self, h: Tensor, targets: Tensor) -> Tensor:
        B, T, _ = h.shape
        q = self.read.queries(h)
        n_mem = max(1, round(self.config.mem_train_fraction * B))
        rows = torch.randperm(B)[:n_mem].to(h.device)
        bank_k = q[rows].detach().reshape(-1, q.shape[-1])
        bank_v = self.embed(targets[rows]).detach().reshape(-1, h.shape[-1])
        k = min(self.config.mem_top_k, len(bank_k))
        top = (q.detach().reshape(-1, q.shape[-1]) @ bank_k.T).topk(k, dim=-1).indices  # [B*T, k]
        keys, values = bank_k[top].view(B, T, k, -1), bank_v[top].view(B, T, k, -1)
        valid = torch.ones(B, T, k, dtype=torch.bool, device=h.device)
        return self.read(h, q, keys, values, valid)[0]

    # ---- running with the memory hierarchy
    def _window(self, ids: list[int] | Tensor) -> Tensor:
        idx = torch.as_tensor(ids, dtype=torch.long, device=self.embed.weight.device).reshape(1, -1)
        return idx[:, -self.config.max_seq_len :]

    @torch.no_grad()
    def next_logits(self, ids: list[int] | Tensor, *, tick: bool = True) -> tuple[Tensor, float]:
        """Logits ``[V]`` for the token after ``ids`` (memory read at the last position) and the gate."""
        idx = self._window(ids)
        h = self.hidden(idx)[:, -1:]
        q = self.read.queries(h)
        keys, values, scores, _ = self.memory.retrieve(q.reshape(1, -1).float().cpu().numpy(), self.config.mem_top_k)
        dev, dt = h.device, h.dtype
        h, g = self.read(
            h,
            q,
            torch.from_numpy(keys).to(dev, dt).view(1, 1, *keys.shape[1:]),
            torch.from_numpy(values).to(dev, dt).view(1, 1, *values.shape[1:]),
            torch.from_numpy(np.isfinite(scores)).to(dev).view(1, 1, -1),
        )
        if tick:
            self.memory.tick()
        return self.head(h)[0, -1], float(g.item())

    def _encode(self, text: str | list[int]) -> list[int]:
        if isinstance(text, str):
            if self.tokenizer is None:
                raise ValueError("this CortexLM has no tokenizer; pass token ids or attach one")
            return self.tokenizer.encode(text)
        return [int(t) for t in text]

    @torch.no_grad()
    def _entries(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray, Tensor, Tensor]:
        """Keys/values of every next-token transition of ``ids`` (per window), plus logits and targets."""
        L = self.config.max_seq_len
        keys, values, logits, targets = [], [], [], []
        for s in range(0, max(1, len(ids) - 1), L):
            chunk = torch.as_tensor(ids[s : s + L + 1], dtype=torch.long, device=self.embed.weight.device)
            x, y = chunk[None, :-1], chunk[None, 1:]
            h = self.hidden(x)
            keys.append(self.read.queries(h)[0].float().cpu().numpy())
            values.append(self.embed(y)[0].float().cpu().numpy())
            logits.append(self.head(h)[0])
            targets.append(y[0])
        return np.concatenate(keys), np.concatenate(values), torch.cat(logits), torch.cat(targets)

    def learn(self, text: str | list[int], *, fast_steps: int | None = None) -> dict:
        """Write ``text`` into STM (every transition) and optionally take SGD steps on the fast weights."""
        ids = self._encode(text)
        if len(ids) < 2:
            raise ValueError(f"learn needs at least 2 tokens, got {len(ids)}")
        keys, values, _, _ = self._entries(ids)
        written = self.memory.write(keys, values)
        steps = self.config.fast_steps if fast_steps is None else fast_steps
        losses = self._fast_update(ids, steps) if steps else []
        self.memory.tick()
        return {"written": len(written), "fast_losses": losses}

    def observe(self, text: str | list[int]) -> int:
        """Automatic write: transitions whose surprise (token NLL) passes the homeostatic threshold."""
        ids = self._encode(text)
        if len(ids) < 2:
            return 0
        keys, values, logits, targets = self._entries(ids)
        nll = F.cross_entropy(logits.float(), targets, reduction="none").cpu().numpy()
        return len(self.memory.observe(keys, values, nll))

    def _fast_update(self, ids: list[int], steps: int) -> list[float]:
        chunk = torch.as_tensor(ids[: self.config.max_seq_len + 1], dtype=torch.long, device=self.embed.weight.device)
        x, y = chunk[None, :-1], chunk[None, 1:]
        with torch.no_grad():
            h = self.hidden(x)
        opt = torch.optim.SGD(self.fast_parameters(), lr=self.config.fast_lr)
        losses = []
        with torch.enable_grad():
            for _ in range(steps):
                loss = F.cross_entropy(self.head(h)[0].float(), y[0])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        return losses

    def get_stats(self) -> dict:
        stats = self.memory.get_stats()
        stats["fast_weight_norm"] = float(self.fast_b.weight.detach().norm())
        return stats

    # ---- persistence
    def save_pretrained(self, directory: str | os.PathLike, *, memory: bool = True) -> Path:
        """``model.safetensors`` + ``model.json`` (+ tokenizer files, + ``memory/``); nothing pickled."""
        directory = Path(directory)
        atomic_save_safetensors(directory / "model.safetensors", self.state_dict(), metadata={"format": MODEL_FORMAT})
        atomic_write_json(
            directory / "model.json",
            {"format": MODEL_FORMAT, "version": MODEL_VERSION, "config": self.config.model_dump(mode="json")},
        )
        if self.tokenizer is not None:
            self.tokenizer.save(directory / "tokenizer")
        if memory:
            self.memory.save(directory / "memory")
        return directory


def load_pretrained(directory: str | os.PathLike, *, map_location: str = "cpu") -> CortexLM:
    """Load a model written by :meth:`CortexLM.save_pretrained` (safetensors + JSON only)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointNotFoundError(f"LM checkpoint folder {directory} not found")
    meta_file = directory / "model.json"
    meta = read_versioned(meta_file, format=MODEL_FORMAT, version=MODEL_VERSION, what="cortexmem LM model file",
                          required=("config",))
    tok_dir = directory / "tokenizer"
    tokenizer = load_tokenizer(tok_dir) if tok_dir.is_dir() else None
    cfg = validate_config(LMConfig, meta["config"], meta_file, "LM config")
    try:
        model = CortexLM(cfg, tokenizer)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"LM config in {meta_file} cannot be built: {' '.join(str(e).split())}") from None
    weights_file = directory / "model.safetensors"
    load_weights_file(model, weights_file, "LM weights file")
    if (directory / "memory").exists():
        model.memory = MemorySystem.load(directory / "memory")
    return model.to(map_location)
