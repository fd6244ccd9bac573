"""PPO checkpoints: ``checkpoint/{model,optim}.safetensors`` and ``trainer.json``; every failure is one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_FORMAT = "cortexmem.rl.ppo"
CHECKPOINT_VERSION = 1
_REQUIRED = ("config", "stack_config", "frames", "updates", "param_groups", "history")


def _corrupt(path: Path, e: BaseException) -> ValueError:
    detail = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ValueError(f"{path}: corrupted or unreadable checkpoint file ({detail})")


def read_checkpoint_meta(checkpoint: str | Path) -> dict[str, Any]:
    """Validated ``trainer.json`` of a checkpoint directory."""
    ckpt = Path(checkpoint)
    path = ckpt / "trainer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt} is not a PPO checkpoint: {path.name} not found")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, e) from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path} is not a cortexmem PPO checkpoint (format={got!r})")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: unsupported version {meta.get('version')!r}, expected {CHECKPOINT_VERSION}")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"{path}: corrupted or unreadable checkpoint file (missing {', '.join(missing)})")
    return meta


def read_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file as ``{name: tensor}`` on ``device``; a damaged file is one ``ValueError`` line."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own SafetensorError (not a ValueError) on damaged files
        raise _corrupt(path, e) from None


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
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shaped = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or extra or shaped:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if extra:
            parts.append(f"unexpected {_few(extra)}")
        if shaped:
            k = shaped[0]
            parts.append(f"{len(shaped)} shape mismatch(es), e.g. {k} {list(tensors[k].shape)} vs {list(own[k].shape)}")
        raise ValueError(f"{path} does not match {what}: {'; '.join(parts)}")
    module.load_state_dict(tensors)


def _few(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
