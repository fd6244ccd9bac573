"""Memory sidecar for frozen Hugging Face causal LMs: streaming, persistent sessions, needle-in-a-haystack."""

from .adapter import MemoryAdapter
from .attach import MemoryLM, attach_memory
from .base import find_decoder_layers
from .chunks import MemoryLMOutput
from .config import CortexWrapConfig, MemoryConfig
from .load import load_qwen_with_cortex, load_with_memory
from .niah import NiahSample, NiahTask, TextNiah, TokenNiah
from .sessions import (
    Fingerprint,
    SessionConflictError,
    SessionInfo,
    SessionMismatchError,
    SessionNotFoundError,
    SessionStore,
)
from .tokenizer import CharTokenizer, load_tokenizer

__all__ = [
    "MemoryConfig", "CortexWrapConfig", "MemoryLM", "MemoryLMOutput", "MemoryAdapter", "attach_memory",
    "load_with_memory", "load_qwen_with_cortex", "find_decoder_layers",
    "SessionStore", "SessionInfo", "Fingerprint", "SessionNotFoundError", "SessionMismatchError",
    "SessionConflictError", "NiahTask", "NiahSample", "TextNiah", "TokenNiah", "CharTokenizer", "load_tokenizer",
]
