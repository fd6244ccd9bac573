"""Data for the LM: a generated offline demo corpus, JSONL -> token memmap preparation, and batch sampling."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..utils.io import CheckpointError, atomic_write_json, check_file, read_json, require_keys
from .tokenizer import LMTokenizer

log = logging.getLogger(__name__)

# Names kept out of the demo corpus so tests can teach them at run time.
RESERVED_NAMES = frozenset({"Zorbia", "Quxi", "Vantor", "Teslin"})
_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "qu",
    "r",
    "s",
    "t",
    "v",
    "x",
    "z",
    "br",
    "dr",
    "kr",
    "tr",
    "st",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "x"]
_SUFFIX = ["ia", "and", "ovia", "ora", "eth", "istan", "ium"]


def _word(rng: np.random.Generator, syllables: int, suffix: str = "") -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)]
    return ("".join(parts) + suffix).capitalize()


def demo_world(n_countries: int = 300, seed: int = 0) -> list[dict[str, str]]:
    """A consistent fictional world: each country has one capital, river and language."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set(RESERVED_NAMES)
    world = []
    while len(world) < n_countries:
        row = {
            "country": _word(rng, int(rng.integers(1, 3)), str(rng.choice(_SUFFIX))),
            "capital": _word(rng, int(rng.integers(1, 3))),
            "river": _word(rng, 2),
            "language": _word(rng, 1, "ic"),
        }
        if seen.isdisjoint(row.values()):
            seen.update(row.values())
            world.append(row)
    return world


_TEMPLATES = [
    ("The capital of {country} is {capital}.", 6),
    ("{capital} is the capital of {country}.", 1),
    ("The river of {country} is the {river}.", 1),
    ("People in {country} speak {language}.", 1),
]


def demo_corpus(n_docs: int = 2000, seed: int = 0, n_countries: int = 300) -> list[str]:
    """Short documents of 3-6 facts, mostly "The capital of X is Y." (teaches copying from memory)."""
    rng = np.random.default_rng(seed + 1)
    world = demo_world(n_countries, seed)
    weights = np.array([w for _, w in _TEMPLATES], np.float64)
    docs = []
    for _ in range(n_docs):
        sents = []
        for _ in range(int(rng.integers(3, 7))):
            tpl = _TEMPLATES[int(rng.choice(len(_TEMPLATES), p=weights / weights.sum()))][0]
            sents.append(tpl.format(**world[int(rng.integers(len(world)))]))
        docs.append(" ".join(sents))
    return docs


def write_demo_data(path: str | os.PathLike, n_docs: int = 2000, seed: int = 0) -> Path:
    """Write the demo corpus as JSONL ``{"text": ...}`` lines."""
    from ..utils.io import atomic_write_text

    path = Path(path)
    atomic_write_text(
        path, "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in demo_corpus(n_docs, seed))
    )
    return path


@dataclass
class PrepareReport:
    train_tokens: int = 0
    val_tokens: int = 0
    docs: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def val_path_for(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(f"{output.stem}.val{output.suffix or '.bin'}")


def prepare(
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    tokenizer: LMTokenizer,
    *,
    val_output: str | os.PathLike | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    text_field: str = "text",
    progress: bool = False,
    flush_tokens: int = 1 << 20,
) -> PrepareReport:
    """Stream JSONL into ``output`` (+ ``val_output``) token files; bad lines are logged and skipped."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    input_path, output = Path(input_path), Path(output)
    val_output = Path(val_output) if val_output is not None else val_path_for(output)
    check_file(input_path, "input")
    dtype = token_dtype(tokenizer.vocab_size)
    rng = np.random.default_rng(seed)
    report = PrepareReport()
    bufs: dict[str, list[int]] = {"train": [], "val": []}
    paths = {"train": output, "val": val_output}
    tmp = {k: p.with_name(f".{p.name}.partial") for k, p in paths.items()}
    for p in tmp.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    files = {k: open(p, "wb") for k, p in tmp.items()}  # noqa: SIM115 (closed in finally)

    def flush(split: str) -> None:
        arr = np.asarray(bufs[split], dtype=dtype)
        arr.tofile(files[split])
        setattr(report, f"{split}_tokens", getattr(report, f"{split}_tokens") + len(arr))
        bufs[split] = []

    prog = _progress(progress, input_path.stat().st_size)
    try:
        with open(input_path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                prog.advance(len(raw))
                if not raw.strip():
                    continue
                text, reason = _parse_line(raw, text_field)
                if reason:
                    report.bad_lines.append((lineno, reason))
                    log.warning("%s:%d: skipped bad line (%s)", input_path, lineno, reason)
                    continue
                split = "val" if rng.random() < val_fraction else "train"
                bufs[split].extend(tokenizer.encode(text))
                bufs[split].append(tokenizer.eos_id)
                report.docs += 1
                if len(bufs[split]) >= flush_tokens:
                    flush(split)
        for split in bufs:
            flush(split)
    finally:
        for fh in files.values():
            fh.close()
        prog.close()
    if report.docs == 0:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        raise ValueError(f"input {input_path} has no JSONL line with a {text_field!r} string field "
                         f"({len(report.bad_lines)} bad lines); nothing written")
    for split, p in paths.items():
        os.replace(tmp[split], p)
        atomic_write_json(
            meta_path(p),
            {
                "dtype": dtype.name,
                "tokens": getattr(report, f"{split}_tokens"),
                "vocab_size": tokenizer.vocab_size,
                "eos_id": tokenizer.eos_id,
            },
        )
    return report


def _parse_line(raw: bytes, text_field: str) -> tuple[str, str]:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return "", f"not UTF-8 ({e.reason})"
    except json.JSONDecodeError as e:
        return "", f"invalid JSON ({e.msg} at column {e.colno})"
    if not isinstance(obj, dict):
        return "", f"expected a JSON object, got {type(obj).__name__}"
    text = obj.get(text_field)
    if not isinstance(text, str):
        return "", f"field {text_field!r} must be a string, got {type(text).__name__}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON escapes like "\ud800" decode to lone surrogates no tokenizer accepts
        return "", f"field {text_field!r} is not valid Unicode ({e.reason} at character {e.start})"
    return text, ""


class _progress:
    """A rich progress bar over bytes read (no-op when disabled)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        if enabled:
            from ..utils.progress import make_progress

            self.bar = make_progress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task("tokenizing", total=total)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def meta_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


_SCAN = 1 << 24  # tokens per chunk of the vocabulary check at load


class TokenData:
    """A prepared token file as a read-only memmap, cut into non-overlapping windows of ``seq_len + 1``."""

    def __init__(self, path: str | os.PathLike, seq_len: int) -> None:
        path = Path(path)
        mp = meta_path(path)
        meta = read_json(mp, "token-file metadata (from `cortex lm prepare`)")
        require_keys(meta, mp, ("dtype", "vocab_size"), "token-file metadata")
        if meta["dtype"] not in ("uint16", "uint32"):
            raise CheckpointError(f"token-file metadata {mp}: dtype must be uint16 or uint32, got {meta['dtype']!r}")
        vocab = meta["vocab_size"]
        if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
            raise CheckpointError(f"token-file metadata {mp}: vocab_size must be an integer >= 1, got {vocab!r}")
        self.vocab_size = vocab
        dtype = np.dtype(meta["dtype"])
        size = check_file(path, "token file")
        if size % dtype.itemsize:
            raise CheckpointError(f"token file {path} has {size} bytes, not a whole number of {dtype.name} tokens")
        self.tokens = np.memmap(path, dtype=dtype, mode="r")
        top = max((int(self.tokens[i : i + _SCAN].max()) for i in range(0, len(self.tokens), _SCAN)), default=0)
        if top >= self.vocab_size:
            raise CheckpointError(f"token file {path} holds token id {top}, outside the vocabulary of "
                                  f"{self.vocab_size} in {mp.name}")
        self.seq_len = seq_len
        self.n_windows = (len(self.tokens) - 1) // seq_len
        if self.n_windows < 1:
            raise CheckpointError(f"token file {path} has {len(self.tokens)} tokens, need at least {seq_len + 1}")

    def epoch_order(self, epoch: int, seed: int) -> np.ndarray:
        """Window order for ``epoch`` (a pure function of seed and epoch: resume needs no sampler state)."""
        return np.random.default_rng([seed, epoch]).permutation(self.n_windows)

    def batch(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` int64 ``[B, seq_len]`` for the given window indices."""
        starts = np.asarray(windows, np.int64) * self.seq_len
        rows = np.stack([np.asarray(self.tokens[s : s + self.seq_len + 1], np.int64) for s in starts])
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]
