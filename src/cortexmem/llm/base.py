"""The frozen base model: its decoder layers, width and fingerprint, and loading a Hugging Face name or folder
with one-line errors."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from torch import nn

from ..utils.extras import require
from ..utils.io import (
    CheckpointError,
    CheckpointNotFoundError,
    one_line,
    read_json,
    safetensors_metadata,
)


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(path, layers)``: the ``nn.ModuleList`` of ``num_hidden_layers`` same-class decoder layers."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = getattr(cfg, "num_hidden_layers", None)
    found = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and len({type(m) for m in mod}) == 1:
            if n is None or len(mod) == n:
                found.append((name, mod))
    # vision towers / encoders of multimodal models also hold layer lists; prefer the text decoder's
    text = [f for f in found if not any(w in f[0] for w in ("vision", "visual", "encoder", "audio"))]
    found = text or found
    if not found:
        raise ValueError(
            f"could not find the decoder layers of {type(model).__name__}: expected an nn.ModuleList of "
            f"{n} identical layers"
        )
    return min(found, key=lambda f: f[0].count("."))


def model_width(model: nn.Module) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for attr in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(cfg, attr, None), int):
            return getattr(cfg, attr)
    raise ValueError(f"cannot read the hidden size of {type(model).__name__} from its config")


def base_fingerprint(model: nn.Module) -> str:
    """Cheap identity of a base model: its config plus names, shapes and leading values of every weight."""
    cfg = model.config.to_dict()
    for k in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash", "use_cache"):
        cfg.pop(k, None)
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}".encode())
        h.update(p.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def _looks_like_path(name: str) -> bool:
    return Path(name).exists() or name.startswith(("/", "./", "../", "~")) or name.endswith((".json", ".safetensors"))


def load_hf_base(name_or_path: str, **hf_kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained`` whose failures on a local folder are one line naming it."""
    transformers = require("transformers", "llm", "the LLM memory sidecar")
    if not sys.stderr.isatty():  # tqdm bars would interleave with our log lines
        transformers.utils.logging.disable_progress_bar()
    if not _looks_like_path(name_or_path):
        return transformers.AutoModelForCausalLM.from_pretrained(name_or_path, **hf_kwargs)
    p = Path(name_or_path).expanduser()
    if not p.exists():
        raise CheckpointNotFoundError(f"base model folder {p} not found")
    if not p.is_dir():
        raise CheckpointError(f"base model {p} is a file, expected a folder with config.json and weights")
    read_json(p / "config.json", "base model config")
    for weights in sorted(p.glob("*.safetensors")):
        safetensors_metadata(weights, "base model weights file")
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(str(p), **hf_kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"base model folder {p} cannot be loaded ({one_line(e)[:300]})") from None
    except Exception as e:  # safetensors' SafetensorError derives from Exception only
        if type(e).__name__ != "SafetensorError":
            raise
        raise CheckpointError(f"base model folder {p} has an unreadable weights file ({one_line(e)})") from None
