"""PPO checkpoints: ``checkpoint/{model,optim}.safetensors`` and ``trainer.json``; every failure is one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.io import (
    CheckpointError,
    atomic_save_safetensors,
    atomic_write_json,
    check_optimizer_state,
    json_safe,
    load_safetensors_checked,
    load_state_checked,
    one_line,
    read_versioned,
)

CHECKPOINT_FORMAT = "cortexmem.rl.ppo"
CHECKPOINT_VERSION = 1
_REQUIRED = ("config", "stack_config", "frames", "updates", "param_groups", "history")


def read_checkpoint_meta(checkpoint: str | Path) -> dict[str, Any]:
    """Validated ``trainer.json`` of a checkpoint directory (read by ``core.io``: every fault is one line)."""
    path = Path(checkpoint) / "trainer.json"
    meta = read_versioned(path, format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION,
                          what="cortexmem PPO checkpoint file", required=_REQUIRED)
    for key in ("config", "stack_config"):
        if not isinstance(meta[key], dict):
            raise CheckpointError(f"cortexmem PPO checkpoint file {path} is corrupted: {key!r} is not an object")
    return meta


def read_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file as ``{name: tensor}`` on ``device``; a damaged file is one ``CheckpointError`` line."""
    return load_safetensors_checked(path, what="checkpoint file", device=device)


def check_compatible(meta: dict[str, Any], path: Path, *, env: str, obs_dim: int, action_space: str) -> None:
    """Refuse a checkpoint whose policy was built for another observation width or action space."""
    want = meta.get("spaces")
    if not isinstance(want, dict):
        return  # written before spaces were recorded: the weight shapes are checked instead
    if want.get("obs_dim") != obs_dim or want.get("action_space") != action_space:
        raise ValueError(
            f"{path} does not fit environment {env!r}: the checkpoint's policy was trained on "
            f"{meta['config'].get('env')!r} with {want.get('obs_dim')} observation features and action space "
            f"{want.get('action_space')}; {env!r} gives {obs_dim} features and {action_space}"
        )


def load_weights(module: nn.Module, tensors: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """``module.load_state_dict(tensors)`` with one line naming missing, unexpected or reshaped entries."""
    load_state_checked(module, tensors, path, f"checkpoint file (for {what})")


def save_checkpoint(trainer: Any, out_dir: Path) -> Path:
    """``out_dir/checkpoint/``: a PPO trainer's model and optimizer safetensors (with the torch RNG state) and
    ``trainer.json`` with its config, counters and history."""
    ckpt = Path(out_dir) / "checkpoint"
    meta = {"format": CHECKPOINT_FORMAT}
    atomic_save_safetensors(ckpt / "model.safetensors", trainer.policy.state_dict(), metadata=meta)
    opt = trainer.optim.state_dict()
    tensors = {f"state.{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    atomic_save_safetensors(ckpt / "optim.safetensors", tensors, metadata=meta)
    atomic_write_json(ckpt / "trainer.json", json_safe({
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": trainer.cfg.model_dump(mode="json"),
        "stack_config": trainer.stack_cfg.model_dump(mode="json"),
        "spaces": {"obs_dim": trainer.obs_dim, "action_space": str(trainer.action_space)},
        "frames": trainer.frames, "updates": trainer.updates, "param_groups": opt["param_groups"],
        "history": trainer.history}))
    return ckpt


def restore_optimizer(optim: torch.optim.Optimizer, flat: dict[str, torch.Tensor], param_groups: Any,
                      path: Path) -> None:
    """Load the optimizer state that :func:`save_checkpoint` flattened into ``flat``; a mismatch is one line."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for name, v in flat.items():
            if name.startswith("state."):
                _, i, k = name.split(".", 2)
                state.setdefault(int(i), {})[k] = v  # load_state_dict moves state to the params (step stays)
        opt_state = {"state": state, "param_groups": param_groups}
        check_optimizer_state(optim, opt_state)
        optim.load_state_dict(opt_state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{path} does not match the policy's parameters ({one_line(e)[:200]})") from None
