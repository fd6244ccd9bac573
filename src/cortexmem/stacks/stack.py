"""CortexStack: a sequence of blocks at ``d_hidden`` with an optional final LayerNorm; save/load without pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from tensordict import TensorDict
from torch import Tensor, nn

from ..blocks.base import BlockConfig, build_block
from ..core.config import TaggedConfig, polymorphic
from ..core.io import atomic_save_safetensors, atomic_write_json
from ..core.module import MemoryModule

STACK_FORMAT = "cortexmem.stack"
STACK_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CortexStackConfig(TaggedConfig):
    """A stack of blocks at width ``d_hidden``; ``post_norm`` adds a final LayerNorm."""

    d_hidden: int = Field(ge=1)
    blocks: list[polymorphic(BlockConfig)] = Field(min_length=1)
    post_norm: bool = True

    def resolve(self) -> CortexStackConfig:
        """A new config with every block's inferred sizes filled in."""
        return self.model_copy(update={"blocks": [b.resolve(self.d_hidden) for b in self.blocks]})


class CortexStack(MemoryModule):
    """Blocks applied in order; state ``{"<BlockClass>_<i>": block_state}``."""

    def __init__(self, config: CortexStackConfig) -> None:
        super().__init__()
        if not isinstance(config, CortexStackConfig):
            raise TypeError(f"CortexStack expects a CortexStackConfig, got {type(config).__name__}")
        self.config = config.resolve()
        self.d_hidden = self.input_size = config.d_hidden
        self.blocks = nn.ModuleList(build_block(b, config.d_hidden) for b in self.config.blocks)
        self.keys = [f"{type(b).__name__}_{i}" for i, b in enumerate(self.blocks)]
        self.norm = nn.LayerNorm(config.d_hidden) if config.post_norm else nn.Identity()

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        pairs = zip(self.keys, self.blocks, strict=True)
        inner = {k: b.init_state(batch, device=device, dtype=dtype) for k, b in pairs}
        return TensorDict(inner, batch_size=[batch], device=device)

    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        new = {}
        for key, block in zip(self.keys, self.blocks, strict=True):
            x, new[key] = block.forward_sequence(x, state[key], resets)
        return self.norm(x), TensorDict(new, batch_size=state.batch_size, device=state.device)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (atomically, no pickle)."""
        directory = Path(directory)
        atomic_save_safetensors(directory / WEIGHTS_FILE, self.state_dict(), metadata={"format": STACK_FORMAT})
        atomic_write_json(
            directory / CONFIG_FILE,
            {"format": STACK_FORMAT, "version": STACK_FORMAT_VERSION, "config": self.config.model_dump(mode="json")},
        )
        return directory


def build_cortex(config: CortexStackConfig) -> CortexStack:
    """Build a :class:`CortexStack` from its config (sizes inferred once into ``stack.config``)."""
    return CortexStack(config)


def load_stack(directory: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> CortexStack:
    """Load a stack written by :meth:`CortexStack.save` (JSON config + safetensors; nothing unpickled)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"load_stack: expected {p.name} in {directory}, not found")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"load_stack: {cfg_path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != STACK_FORMAT:
        raise ValueError(f"load_stack: {cfg_path} is not a cortexmem stack config (format={meta.get('format')!r})"
                         if isinstance(meta, dict) else f"load_stack: {cfg_path} must hold a JSON object")
    if meta.get("version") != STACK_FORMAT_VERSION:
        raise ValueError(f"load_stack: unsupported version {meta.get('version')!r}, expected {STACK_FORMAT_VERSION}")
    stack = build_cortex(CortexStackConfig.model_validate(meta["config"]))
    stack.load_state_dict(load_file(str(weights_path), device=str(map_location)))
    return stack
