"""The sidecar's trainable part: the per-layer :class:`MemoryAdapter` (the registered
:class:`~cortexmem.blocks.sidecar.SidecarBlock` a :class:`MemoryConfig` describes), one per wrapped layer in
:class:`SidecarMemory`, and the adapter folder format (``memory_config.json`` + ``memory.safetensors``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tensordict import TensorDict
from torch import nn

from ..blocks.sidecar import GateContext, SidecarBlock
from ..utils.io import (
    CheckpointError,
    CheckpointNotFoundError,
    atomic_save_safetensors,
    atomic_write_json,
    load_weights_file,
    read_json,
    require_keys,
    validate_config,
)
from .config import MemoryConfig

ADAPTER_CONFIG = "memory_config.json"
ADAPTER_WEIGHTS = "memory.safetensors"


class MemoryAdapter(SidecarBlock):
    """One wrapped layer's memory: the :class:`~cortexmem.blocks.sidecar.SidecarBlock` that ``cfg`` describes
    (``MemoryConfig.block_config()``) at the model's width ``d_model``."""

    def __init__(self, d_model: int, cfg: MemoryConfig) -> None:
        super().__init__(cfg.block_config(), d_model)


class SidecarMemory(nn.Module):
    """One ``MemoryAdapter`` per wrapped layer; state ``{"layer_<i>": cell state}``."""

    def __init__(self, d_model: int, cfg: MemoryConfig, layer_ids: list[int]) -> None:
        super().__init__()
        self.cfg, self.d_model, self.layer_ids = cfg, d_model, list(layer_ids)
        self.adapters = nn.ModuleDict({str(i): MemoryAdapter(d_model, cfg) for i in layer_ids})

    def init_state(self, batch: int, device: Any = None) -> TensorDict:
        return TensorDict(
            {f"layer_{i}": self.adapters[str(i)].init_state(batch, device=device) for i in self.layer_ids},
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
        load_weights_file(self, path, "memory adapter weights file", device=next(self.parameters()).device)


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


__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "GateContext", "MemoryAdapter", "SidecarMemory",
           "read_adapter_config", "resolve_adapter_dir"]
