"""A character tokenizer for the offline base model (``pretrain-base``), and a loader that falls back to HF's."""

from __future__ import annotations

import logging
import string
from pathlib import Path
from typing import Any

from ..utils.io import CheckpointError, atomic_write_json, read_json

log = logging.getLogger(__name__)

TOKENIZER_FILE = "cortex_tokenizer.json"
_SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


class CharTokenizer:
    """One id per printable ASCII character; ids 0-3 are ``<pad> <bos> <eos> <unk>``."""

    pad_token_id, bos_token_id, eos_token_id, unk_token_id = 0, 1, 2, 3

    def __init__(self, chars: str | None = None) -> None:
        chars = chars if chars is not None else string.ascii_letters + string.digits + string.punctuation + " \n"
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: chars must be distinct")
        self.chars = chars
        self._to_id = {c: i + len(_SPECIALS) for i, c in enumerate(chars)}

    @property
    def vocab_size(self) -> int:
        return len(_SPECIALS) + len(self.chars)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [self._to_id.get(c, self.unk_token_id) for c in text]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        out = []
        for i in (ids.tolist() if hasattr(ids, "tolist") else ids):
            if i >= len(_SPECIALS):
                out.append(self.chars[i - len(_SPECIALS)])
            elif not skip_special_tokens:
                out.append(_SPECIALS[i])
        return "".join(out)

    def save(self, directory: str | Path) -> None:
        atomic_write_json(Path(directory) / TOKENIZER_FILE, {"type": "char", "chars": self.chars})

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        path = Path(directory) / TOKENIZER_FILE
        data = read_json(path, "tokenizer file")
        if data.get("type") != "char":
            raise CheckpointError(f"tokenizer file {path}: unknown tokenizer type {data.get('type')!r}")
        chars = data.get("chars")
        if not isinstance(chars, str) or not chars:
            raise CheckpointError(f"tokenizer file {path}: 'chars' must be a non-empty string")
        try:
            return cls(chars)
        except ValueError as e:
            raise CheckpointError(f"tokenizer file {path}: {e}") from None


def load_tokenizer(name_or_path: str | Path) -> Any:
    """Our ``CharTokenizer`` when the folder has one, else ``AutoTokenizer``; ``None`` if neither loads."""
    if (Path(name_or_path) / TOKENIZER_FILE).is_file():
        return CharTokenizer.load(name_or_path)
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as err:
        log.warning("no tokenizer loaded for %s: %s", name_or_path, err)
        return None


def encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without BOS/EOS, for either tokenizer kind."""
    return list(tokenizer.encode(text, add_special_tokens=False))
