"""CortexStack: a sequence of blocks at ``d_hidden`` with an optional final LayerNorm; save/load without pickle."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from tensordict import TensorDict
from torch import Tensor, nn

from ..blocks.base import BlockConfig, build_block
from ..core.config import TaggedConfig, polymorphic
from ..core.module import MemoryModule
from ..runtime.finite import enable_finite_check, finite_check_requested
from ..utils.io import (
    CheckpointError,
    atomic_write_bytes,
    atomic_write_json,
    load_weights_file,
    read_bytes,
    read_versioned,
    validate_config,
)
from ..utils.paths import safe_join

STACK_FORMAT = "cortexmem.stack"
STACK_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"


class CortexStackConfig(TaggedConfig):
    """A stack of blocks at width ``d_hidden``; ``post_norm`` adds a final LayerNorm."""

    d_hidden: int = Field(ge=1)
    blocks: list[polymorphic(BlockConfig)] = Field(min_length=1)
    post_norm: bool = True
    check_finite: bool = False  # raise NonFiniteError naming the first module that outputs NaN/Inf

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
        """Write ``config.json`` and ``model-<hash>.safetensors`` into ``directory`` (crash-safe, no pickle).

        The weights go to a new content-named file first; ``config.json`` (written atomically) then points at it,
        which is the commit. A crash at any point leaves the previous checkpoint loadable.
        """
        from safetensors.torch import save as st_save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        blob = st_save({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                       metadata={"format": STACK_FORMAT})
        digest = hashlib.sha256(blob).hexdigest()
        weights_name = f"model-{digest[:16]}.safetensors"
        atomic_write_bytes(directory / weights_name, blob)
        atomic_write_json(directory / CONFIG_FILE, {
            "format": STACK_FORMAT, "version": STACK_FORMAT_VERSION, "weights": weights_name, "sha256": digest,
            "config": self.config.model_dump(mode="json"),
        })
        for old in directory.glob("model-*.safetensors"):
            if old.name != weights_name:
                old.unlink(missing_ok=True)
        return directory


def build_cortex(config: CortexStackConfig) -> CortexStack:
    """Build a :class:`CortexStack` from its config (sizes inferred once into ``stack.config``).

    With ``config.check_finite`` or ``CORTEX_CHECK_FINITE=1`` the stack checks every module's output for NaN/Inf.
    """
    stack = CortexStack(config)
    if config.check_finite or finite_check_requested():
        enable_finite_check(stack)
    return stack


def load_stack(directory: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> CortexStack:
    """Load a stack written by :meth:`CortexStack.save` (JSON config + safetensors; nothing unpickled)."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_FILE
    meta = read_versioned(cfg_path, format=STACK_FORMAT, version=STACK_FORMAT_VERSION, what="cortexmem stack config",
                          required=("config", "weights", "sha256"))
    if not isinstance(meta["config"], dict):
        raise CheckpointError(f"stack config {cfg_path} has no 'config' object")
    try:
        weights_path = safe_join(directory, meta["weights"], "weights file name")
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"stack config {cfg_path}: {e}") from None
    blob = read_bytes(weights_path, "stack weights file")
    if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise CheckpointError(f"stack weights file {weights_path} does not match the sha256 recorded in {cfg_path}")
    cfg = validate_config(CortexStackConfig, meta["config"], cfg_path, "stack config")
    try:
        stack = build_cortex(cfg)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"stack config {cfg_path} cannot be built: {' '.join(str(e).split())}") from None
    load_weights_file(stack, weights_path, "stack weights file", data=blob)
    return stack.to(map_location)
