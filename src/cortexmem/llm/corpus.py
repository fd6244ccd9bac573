"""Real English prose available offline: the docstrings of the running Python's standard library.

Every ``.py`` file under ``sysconfig.get_paths()["stdlib"]`` (tests, IDLE, 2to3 and turtle demos left out) is
parsed with ``ast`` (never imported); each docstring paragraph of 80+ characters that reads as prose (no doctest,
90 % letters and spaces) is one passage. Passages split 4:1 into ``train`` / ``eval`` by a hash of their text, so
held-out haystacks and the held-out perplexity text never share a passage with training. The corpus depends on
the Python version (3.11: about 4,900 passages, 0.97 M characters, 0.2 M SmolLM2 tokens).
"""

from __future__ import annotations

import ast
import re
import sysconfig
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo"}


@lru_cache(maxsize=2)
def stdlib_passages(split: str) -> tuple[str, ...]:
    """Prose paragraphs of the standard library's docstrings, in file order, for ``split`` train or eval."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        if _SKIP_DIRS.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                for para in re.split(r"\n\s*\n", doc or ""):
                    text = " ".join(para.split())
                    if _is_prose(text) and (zlib.crc32(text.encode()) % 5 == 0) == (split == "eval"):
                        out.append(text)
    return tuple(dict.fromkeys(out))  # some docstrings are repeated verbatim across modules


def _is_prose(text: str) -> bool:
    return len(text) >= 80 and ">>>" not in text and sum(c.isalpha() or c == " " for c in text) >= 0.9 * len(text)


class TokenizedCorpus:
    """Passages tokenized once into one flat array; ``draw`` concatenates random passages to any length."""

    def __init__(self, tokenizer: Any, split: str) -> None:
        passages = stdlib_passages(split)
        if not passages:
            raise ValueError(f"no prose passages found in the standard library at {sysconfig.get_paths()['stdlib']}")
        enc = tokenizer([" " + p for p in passages], add_special_tokens=False)["input_ids"] \
            if callable(tokenizer) else [tokenizer.encode(" " + p, add_special_tokens=False) for p in passages]
        self.lengths = np.array([len(e) for e in enc], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.tokens = np.fromiter((t for e in enc for t in e), dtype=np.int64, count=int(self.lengths.sum()))
        self.split = split

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)

    def draw(self, gen: np.random.Generator, n_tokens: int) -> list[np.ndarray]:
        """Random passages (with replacement) totalling exactly ``n_tokens`` (the last one cut)."""
        if n_tokens <= 0:
            return []
        mean = max(1.0, float(self.lengths.mean()))
        idx = gen.integers(0, len(self.lengths), size=int(n_tokens / mean * 1.2) + 4)
        while self.lengths[idx].sum() < n_tokens:
            idx = np.concatenate([idx, gen.integers(0, len(self.lengths), size=len(idx))])
        cum = np.cumsum(self.lengths[idx])
        k = int(np.searchsorted(cum, n_tokens)) + 1  # passages needed to reach n_tokens
        pieces = [self.tokens[s:s + n] for s, n in zip(self.starts[idx[:k]], self.lengths[idx[:k]], strict=True)]
        pieces[-1] = pieces[-1][: n_tokens - int(cum[k - 2] if k > 1 else 0)]
        return pieces

    def text(self, gen: np.random.Generator, n_tokens: int) -> np.ndarray:
        """``n_tokens`` ids of random passages back to back."""
        return np.concatenate(self.draw(gen, n_tokens)) if n_tokens > 0 else np.zeros(0, dtype=np.int64)


@lru_cache(maxsize=4)
def _cached(tokenizer: Any, split: str) -> TokenizedCorpus:
    return TokenizedCorpus(tokenizer, split)


def stdlib_corpus(tokenizer: Any, split: str) -> TokenizedCorpus:
    """The tokenized standard-library prose of ``split``, built once per tokenizer."""
    return _cached(tokenizer, split)
