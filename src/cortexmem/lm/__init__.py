"""``cortexmem.lm``: a small LM with STM -> LTM -> Archive memory that learns while it runs."""

from __future__ import annotations

from .generate import generate, generate_ids
from .memory import MemoryConfig, MemorySystem
from .model import CortexLM, LMConfig, load_pretrained
from .tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer, train_bpe
from .train import TrainConfig, Trainer

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CortexLM",
    "LMConfig",
    "MemoryConfig",
    "MemorySystem",
    "TrainConfig",
    "Trainer",
    "generate",
    "generate_ids",
    "load_pretrained",
    "load_tokenizer",
    "train_bpe",
]
