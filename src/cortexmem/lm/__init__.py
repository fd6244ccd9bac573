"""``cortexmem.lm``: a small LM with STM -> LTM -> Archive memory that learns while it runs.

Names resolve lazily so that ``cortex`` starts without the optional ``faiss``/``tokenizers`` packages.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "generate": "generate",
    "generate_ids": "generate",
    "MemorySystemConfig": "memory",
    "MemorySystem": "memory",
    "CortexLM": "model",
    "LMConfig": "model",
    "load_pretrained": "model",
    "BPETokenizer": "tokenizer",
    "ByteTokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "train_bpe": "tokenizer",
    "Trainer": "train",
    "TrainConfig": "train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cortexmem.lm' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
