"""The sidecar's trainable part: the per-layer :class:`MemoryAdapter` (a registered cell between norms, a zero-init
gate), the optional write-gate context, and the adapter folder format (``memory_config.json`` +
``memory.safetensors``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor, nn

from ..cells.base import build_cell
from ..cells.gated_delta import DeltaMemoryCell
from ..utils.io import (
    CheckpointError,
    CheckpointNotFoundError,
    atomic_save_safetensors,
    atomic_write_json,
    load_safetensors_checked,
    load_state_checked,
    read_json,
    require_keys,
    validate_config,
)
from .config import MemoryConfig

ADAPTER_CONFIG = "memory_config.json"
ADAPTER_WEIGHTS = "memory.safetensors"


class GateContext(nn.Module):
    """Write-gate logit from the last ``taps`` memory inputs: ``Linear(silu(causal_conv(x)))``, zero at init.

    State: the previous ``taps - 1`` inputs ``[B, taps - 1, width]``, so chunked calls equal one call.
    """

    def __init__(self, width: int, taps: int, hidden: int, heads: int) -> None:
        super().__init__()
        self.taps = taps
        bound = 1 / math.sqrt(width * taps)
        self.weight = nn.Parameter(torch.empty(hidden, width, taps).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.out = nn.Linear(hidden, heads)
        # zero read-out: the gate equals the cell's own at init and `out` gets gradient from step 0
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def init_state(self, batch: int, device: Any, dtype: torch.dtype) -> Tensor:
        return torch.zeros(batch, self.taps - 1, self.weight.shape[1], device=device, dtype=dtype)

    def forward(self, x: Tensor, buf: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, T, W]``, ``buf [B, taps-1, W]`` -> ``(logit [B, T, NH], new buf)``."""
        T = x.shape[1]
        xe = torch.cat([buf.to(x.dtype), x], dim=1)  # (B, taps-1+T, W)
        hid = F.conv1d(xe.transpose(1, 2), self.weight.to(x.dtype), self.bias.to(x.dtype))  # (B, hidden, T)
        logit = self.out(F.silu(hid).transpose(1, 2))
        return logit, xe[:, T:]


class MemoryAdapter(nn.Module):
    """Reads and writes one layer's residual stream: ``h + gate * rms(h) * up(rmsnorm(cell(down(rmsnorm(h)))))``."""

    def __init__(self, d_model: int, cfg: MemoryConfig) -> None:
        super().__init__()
        cell_cfg = cfg.cell_config()
        width = cell_cfg.hidden_size
        self.norm = nn.RMSNorm(d_model, eps=cfg.norm_eps)
        self.down = nn.Linear(d_model, width, bias=False)
        self.cell = build_cell(cell_cfg)
        self.out_norm = nn.RMSNorm(width, eps=cfg.norm_eps)
        self.up = nn.Linear(width, d_model, bias=False)
        # zero gate: exactly the base model at init, yet the gate itself gets gradient from the first step
        self.gate = nn.Parameter(torch.zeros(d_model))
        self._conv_fill = cfg.induction_init
        self.gate_ctx = None
        if cfg.gate_context:
            if not hasattr(self.cell, "write_gates"):
                raise ValueError(f"gate_context needs a cell with a write gate (gated-delta / hybrid), got "
                                 f"{type(self.cell).__name__}")
            self.gate_ctx = GateContext(width, cfg.gate_context, cfg.gate_context_hidden, self.cell.num_heads)
        if cfg.zero_init == "up":
            # zero read-out instead of zero gate: `up` gets gradient from step 0 (a linear probe of the memory read)
            with torch.no_grad():
                self.gate.fill_(1.0)
                self.up.weight.zero_()
        self._init_gates(cfg)

    def _init_gates(self, cfg: MemoryConfig) -> None:
        """The config's init recipes, which the gated-delta cells own (other cells have no decay or write gate)."""
        cell = self.cell
        if isinstance(cell, DeltaMemoryCell):
            if cfg.decay_init is not None:
                cell.init_decay(cfg.decay_init)
            if cfg.write_init is not None:
                cell.init_write(cfg.write_init)
        if cfg.induction_init:
            if not isinstance(cell, DeltaMemoryCell):
                raise ValueError("induction_init needs a gated-delta cell with use_short_conv=True and "
                                 "compressor='none'")
            cell.init_induction()

    def init_state(self, batch: int, device: Any = None) -> TensorDict:
        st = self.cell.init_state(batch, device=device, dtype=self.gate.dtype)
        if self._conv_fill and "conv" in st.keys():
            # with the induction conv the first key sees only the carried buffer: a zero buffer gives a zero key,
            # whose L2 normalisation has a 1e12 gradient that swamps every other one under clipping
            st["conv"] = torch.full_like(st["conv"], 0.1)
        if self.gate_ctx is not None:
            st["gate_ctx"] = self.gate_ctx.init_state(batch, device, self.gate.dtype)
        return st

    @property
    def has_write_gate(self) -> bool:
        return hasattr(self.cell, "write_gates")

    def write(self, src: Tensor, state: TensorDict, want_gates: bool = False
              ) -> tuple[Tensor, TensorDict, Tensor | None]:
        """Cell step on ``src [B, T, D]`` -> ``(y [B, T, W], new_state, b [B, T] or None)``.

        ``b`` (with ``want_gates``) is the write strength averaged over heads, context term included.
        """
        x = self.down(self.norm(src.to(self.gate.dtype)))  # (B, T, W)
        if self.gate_ctx is None:
            y, new_state = self.cell.forward_sequence(x, state, None)
            bias = None
        else:
            bias, buf = self.gate_ctx(x, state["gate_ctx"])
            y, new_state = self.cell.forward_sequence(x, state.exclude("gate_ctx"), None, beta_bias=bias)
            new_state["gate_ctx"] = buf.to(state["gate_ctx"].dtype)
        b = None
        if want_gates:
            if not self.has_write_gate:
                raise ValueError(f"{type(self.cell).__name__} has no write gate to measure or penalise")
            b = self.cell.write_gates(x, bias)[1].float().mean(-1)
        return y, new_state, b

    def forward(self, h: Tensor, state: TensorDict, src: Tensor | None = None, want_gates: bool = False
                ) -> tuple[Tensor, TensorDict, Tensor | None]:
        """``h`` ``[B, T, D]`` (read from ``src`` ``[B, T, D]`` when given) -> ``(h', new_state, b)``."""
        y, new_state, b = self.write(h if src is None else src, state, want_gates)
        hf = h.to(self.gate.dtype)
        # write back in units of the residual's own scale (RMS per token): pretrained residual streams are far
        # larger than a fresh cell's output, and a gate that must grow 20x first stalls training for 1000s of steps
        scale = hf.detach().pow(2).mean(-1, keepdim=True).add(self.norm.eps or 1e-6).sqrt()
        return h + (self.gate * self.up(self.out_norm(y)) * scale).to(h.dtype), new_state, b


class SidecarMemory(nn.Module):
    """One ``MemoryAdapter`` per wrapped layer; state ``{"layer_<i>": cell state}``."""

    def __init__(self, d_model: int, cfg: MemoryConfig, layer_ids: list[int]) -> None:
        super().__init__()
        self.cfg, self.d_model, self.layer_ids = cfg, d_model, list(layer_ids)
        self.adapters = nn.ModuleDict({str(i): MemoryAdapter(d_model, cfg) for i in layer_ids})

    def init_state(self, batch: int, device: Any = None) -> TensorDict:
        return TensorDict(
            {f"layer_{i}": self.adapters[str(i)].init_state(batch, device) for i in self.layer_ids},
            batch_size=[batch], device=device,
        )


    def save(self, directory: str | Path, base_fingerprint: str, base_model: str = "") -> Path:
        """Write the adapter folder: ``memory_config.json`` (config, layers, base fingerprint) + weights."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / ADAPTER_CONFIG, {
            "format": "cortexmem-llm-memory-1", "memory": self.cfg.model_dump(), "layers": self.layer_ids,
            "d_model": self.d_model, "base_fingerprint": base_fingerprint, "base_model": base_model,
        })
        atomic_save_safetensors(d / ADAPTER_WEIGHTS, dict(self.state_dict()))
        return d

    def load(self, directory: str | Path, base_fingerprint: str | None = None) -> None:
        """Load an adapter folder written by ``save`` with this config and layers (and, unless
        ``base_fingerprint`` is None, trained on that base)."""
        directory = resolve_adapter_dir(directory)
        meta = read_adapter_config(directory)
        cfg = validate_config(MemoryConfig, meta["memory"], directory / ADAPTER_CONFIG, "memory config")
        if cfg.model_dump() != self.cfg.model_dump() or meta["layers"] != self.layer_ids:
            raise CheckpointError(f"adapter in {directory} was built with a different MemoryConfig/layers; use "
                                  f"load_with_memory(..., adapter=...) to build a matching sidecar")
        if base_fingerprint is not None and meta["base_fingerprint"] != base_fingerprint:
            raise CheckpointError(f"adapter in {directory} was trained on a different base model (fingerprint "
                                  f"{meta['base_fingerprint']}, this base has {base_fingerprint})")
        path = directory / ADAPTER_WEIGHTS
        weights = load_safetensors_checked(path, what="memory adapter weights file",
                                           device=next(self.parameters()).device)
        load_state_checked(self, weights, path, "memory adapter weights file")


def resolve_adapter_dir(path: str | Path) -> Path:
    """The folder holding ``memory_config.json``: ``path`` itself, or ``path/memory`` / ``path/ckpt/memory``
    of a ``train-niah`` run folder."""
    p = Path(path)
    if not p.exists():
        raise CheckpointNotFoundError(f"memory adapter folder {p} not found")
    for cand in (p, p / "memory", p / "ckpt" / "memory"):
        if (cand / ADAPTER_CONFIG).exists():
            return cand
    raise CheckpointNotFoundError(f"no {ADAPTER_CONFIG} in {p} (nor in {p / 'memory'}): not a memory adapter "
                                  f"or train-niah run folder")


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The validated ``memory_config.json`` of an adapter folder (or of a run folder, see ``resolve_adapter_dir``)."""
    path = resolve_adapter_dir(directory) / ADAPTER_CONFIG
    meta = read_json(path, "memory adapter config")
    if meta.get("format", "cortexmem-llm-memory-1") != "cortexmem-llm-memory-1":
        raise CheckpointError(f"{path} is not a cortexmem memory adapter config (format {meta.get('format')!r})")
    require_keys(meta, path, ("memory", "layers", "base_fingerprint"), "memory adapter config")
    if not isinstance(meta["memory"], dict):
        raise CheckpointError(f"memory adapter config {path}: 'memory' must be a JSON object")
    return meta
