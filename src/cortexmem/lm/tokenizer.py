"""Tokenizers for the LM: a byte-level BPE trained locally with ``tokenizers``, or plain bytes."""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..utils.extras import require
from ..utils.io import (
    CheckpointError,
    CheckpointNotFoundError,
    atomic_write_json,
    atomic_write_text,
    one_line,
    read_bytes,
    read_json,
)

SPECIALS = ("<|pad|>", "<|bos|>", "<|eos|>")
META_FILE = "tokenizer_meta.json"
BPE_FILE = "tokenizer.json"


class LMTokenizer(ABC):
    """Interface: ``encode(str) -> list[int]``, ``decode(list[int]) -> str``, special ids, save."""

    kind: str
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Text -> token ids (no special tokens added)."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text (special tokens dropped)."""

    @abstractmethod
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the tokenizer files into ``directory``."""


class ByteTokenizer(LMTokenizer):
    """UTF-8 bytes 0..255, then ``<|pad|> <|bos|> <|eos|>``; round-trips any text."""

    kind = "byte"

    def __init__(self) -> None:
        self.vocab_size = 256 + len(SPECIALS)
        self.pad_id, self.bos_id, self.eos_id = 256, 257, 258

    def encode(self, text: str) -> list[int]:
        _check_text(text)
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        atomic_write_json(directory / META_FILE, {"kind": self.kind, "vocab_size": self.vocab_size})
        return directory


class BPETokenizer(LMTokenizer):
    """Byte-level BPE (GPT-2 style byte alphabet, so no text is out of vocabulary)."""

    kind = "bpe"

    def __init__(self, tok) -> None:  # tok: tokenizers.Tokenizer
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.pad_id, self.bos_id, self.eos_id = (tok.token_to_id(s) for s in SPECIALS)

    def encode(self, text: str) -> list[int]:
        _check_text(text)
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        atomic_write_text(directory / BPE_FILE, self.tok.to_str())
        atomic_write_json(directory / META_FILE, {"kind": self.kind, "vocab_size": self.vocab_size})
        return directory


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise TypeError(f"encode expects str, got {type(text).__name__}")


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> BPETokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens (>= 256 bytes + specials) on ``texts``."""
    require("tokenizers", "lm", "training a BPE tokenizer")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    floor = 256 + len(SPECIALS)
    if vocab_size < floor:
        raise ValueError(f"vocab_size must be >= {floor} (bytes + special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok)


def iter_jsonl_texts(path: str | os.PathLike, field: str = "text") -> Iterator[str]:
    """Texts from a JSONL file; malformed lines are skipped (``prepare`` reports them with line numbers)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get(field), str):
                yield obj[field]


def load_tokenizer(directory: str | os.PathLike | None) -> LMTokenizer:
    """Load a tokenizer saved by ``save`` (``None`` -> the byte tokenizer)."""
    if directory is None:
        return ByteTokenizer()
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointNotFoundError(f"tokenizer folder {directory} not found")
    meta_path = directory / META_FILE
    kind = read_json(meta_path, "tokenizer file").get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        Tokenizer = require("tokenizers", "lm", "a BPE tokenizer").Tokenizer
        bpe_path = directory / BPE_FILE
        read_bytes(bpe_path, "BPE tokenizer file")
        try:
            tok = BPETokenizer(Tokenizer.from_file(str(bpe_path)))
        except Exception as e:  # the tokenizers library raises a plain Exception for a corrupt file
            raise CheckpointError(f"BPE tokenizer file {bpe_path} cannot be read ({one_line(e)})") from None
        if None in (tok.pad_id, tok.bos_id, tok.eos_id):
            raise CheckpointError(f"BPE tokenizer file {bpe_path} lacks the special tokens {', '.join(SPECIALS)}")
        return tok
    raise CheckpointError(f"tokenizer file {meta_path}: unknown tokenizer kind {kind!r}, expected 'bpe' or 'byte'")
