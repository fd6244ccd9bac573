"""Synthetic memory tasks: fixed-seed generators of ``(tokens [N, T], targets [N, T], mask [N, T])``.

Every task is next-step classification: the model reads ``tokens`` causally and is scored only where ``mask``
is True (the loss mask), predicting ``targets`` there (ignored elsewhere). Train and test splits come from
disjoint seed streams of the same generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

TRAIN, TEST = "train", "test"


@dataclass(frozen=True)
class TaskData:
    """One split: ``tokens`` long ``[N, T]``, ``targets`` long ``[N, T]``, ``mask`` bool ``[N, T]``."""

    tokens: Tensor
    targets: Tensor
    mask: Tensor
    #: per-sample floats (e.g. needle depth in [0, 1)), used for sliced accuracies
    meta: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.tokens.shape[0]


@dataclass(frozen=True)
class TaskSpec:
    """A generator at a fixed length plus its options; ``vocab_size`` inputs, ``num_classes`` outputs."""

    name: str
    length: int
    vocab_size: int
    num_classes: int
    options: dict[str, int]
    make: Callable[[int, torch.Generator], TaskData]
    #: how many answers a scored position can have, equally likely: chance accuracy is ``1 / answers``
    answers: int = 0

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess among the possible answers."""
        return 1.0 / (self.answers or self.num_classes)

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}@{self.length}" + (f"[{extra}]" if extra else "")

    def split(self, split: str, n: int, seed: int) -> TaskData:
        """``n`` samples of ``split`` ("train"/"test"); the two splits use disjoint seed streams."""
        if split not in (TRAIN, TEST):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if n < 1:
            raise ValueError(f"split size must be >= 1, got {n}")
        g = torch.Generator().manual_seed(_stream_seed(seed, self.label, split))
        return self.make(n, g)


def _stream_seed(seed: int, label: str, split: str) -> int:
    # A stable (not Python-hash-randomised) mix of seed, task label and split.
    h = 1469598103934665603
    for ch in f"{seed}|{label}|{split}":
        h = ((h ^ ord(ch)) * 1099511628211) % (1 << 63)
    return h


def _randint(g: torch.Generator, lo: int, hi: int, shape: tuple[int, ...]) -> Tensor:
    return torch.randint(lo, hi, shape, generator=g)


# --- delayed recall (T-maze) --------------------------------------------------------------------------------
def delayed_recall(length: int, n_cues: int = 4, n_distractors: int = 4) -> TaskSpec:
    """Cue ``c < n_cues`` at t=0, distractors, a query token at t=T-1 whose target is ``c``."""
    if length < 2:
        raise ValueError(f"delayed_recall needs length >= 2, got {length}")
    query = n_cues + n_distractors

    def make(n: int, g: torch.Generator) -> TaskData:
        cue = _randint(g, 0, n_cues, (n,))
        tokens = _randint(g, n_cues, n_cues + n_distractors, (n, length))
        tokens[:, 0] = cue
        tokens[:, -1] = query
        targets = torch.zeros(n, length, dtype=torch.long)
        targets[:, -1] = cue
        mask = torch.zeros(n, length, dtype=torch.bool)
        mask[:, -1] = True
        return TaskData(tokens, targets, mask)

    return TaskSpec("delayed_recall", length, query + 1, n_cues,
                    {"n_cues": n_cues, "n_distractors": n_distractors}, make)


# --- majority -----------------------------------------------------------------------------------------------
def running_majority(tokens: Tensor, n_symbols: int) -> Tensor:
    """``[N, T]`` most frequent symbol of each prefix; ties go to the smallest symbol (vectorised)."""
    counts = torch.nn.functional.one_hot(tokens, n_symbols).cumsum(1)  # (N, T, S)
    # argmax returns the first maximal index, i.e. the smallest tied symbol
    return counts.argmax(-1)


def majority(length: int, n_symbols: int = 4, per_step: int = 0) -> TaskSpec:
    """Symbols ``< n_symbols``; predict the most frequent one at the end (``per_step=1``: at every step).

    The final answer is made unique: a tie at the end is broken by rewriting one position to the winner.
    """
    if length < 1:
        raise ValueError(f"majority needs length >= 1, got {length}")

    def make(n: int, g: torch.Generator) -> TaskData:
        tokens = _randint(g, 0, n_symbols, (n, length))
        counts = torch.nn.functional.one_hot(tokens, n_symbols).sum(1)  # (N, S)
        top = counts.max(1).values
        tied = (counts == top[:, None]).sum(1) > 1
        if tied.any():
            # Rewrite the last position of each tied row to its smallest tied symbol, which then wins alone
            # (it gains one count; the last token, being a different symbol or the same, loses at most one).
            winner = (counts == top[:, None]).float().argmax(1)
            last = tokens[:, -1]
            fix = tied & (last != winner)
            tokens[fix, -1] = winner[fix]
            still = tied & ~fix
            if still.any():  # last token already is the winner: change the first non-winner position instead
                rows = still.nonzero().flatten()
                for r in rows.tolist():
                    pos = (tokens[r] != winner[r]).nonzero()[0, 0]
                    tokens[r, pos] = winner[r]
        targets = running_majority(tokens, n_symbols)
        mask = torch.zeros(n, length, dtype=torch.bool)
        if per_step:
            mask[:] = True
        else:
            mask[:, -1] = True
        return TaskData(tokens, targets, mask)

    return TaskSpec("majority", length, n_symbols, n_symbols, {"n_symbols": n_symbols, "per_step": per_step},
                    make)


# --- Dyck-k validity ----------------------------------------------------------------------------------------
def dyck_valid(seq: list[int], k: int) -> bool:
    """Stack check: opening brackets are ``0..k-1``, the closing partner of ``i`` is ``k + i``."""
    stack: list[int] = []
    for t in seq:
        if t < k:
            stack.append(t)
        elif not stack or stack.pop() != t - k:
            return False
    return not stack


def _random_dyck(n_chars: int, k: int, g: torch.Generator) -> list[int]:
    seq: list[int] = []
    stack: list[int] = []
    for i in range(n_chars):
        remaining = n_chars - i
        must_close = len(stack) == remaining
        can_close = bool(stack)
        if must_close or (can_close and torch.rand((), generator=g).item() < 0.5):
            seq.append(k + stack.pop())
        else:
            b = int(torch.randint(0, k, (), generator=g))
            stack.append(b)
            seq.append(b)
    return seq


def _balanced_negative(valid: list[int], k: int, g: torch.Generator) -> list[int] | None:
    """An invalid word with the same count of every bracket token, or None if this word admits none.

    Mode 0 swaps two closing brackets of different types: the depth profile (hence the pairing) is unchanged,
    so both swapped closers now mismatch their openers. Mode 1 shuffles the word until it is invalid.
    """
    closers = [i for i, t in enumerate(valid) if t >= k]
    if torch.rand((), generator=g).item() < 0.5:
        for _ in range(8):
            a, b = (closers[int(j)] for j in torch.randint(0, len(closers), (2,), generator=g))
            if valid[a] != valid[b]:
                out = list(valid)
                out[a], out[b] = out[b], out[a]
                return out
    for _ in range(8):
        perm = torch.randperm(len(valid), generator=g).tolist()
        out = [valid[p] for p in perm]
        if not dyck_valid(out, k):
            return out
    return None


def dyck(length: int, k: int = 2) -> TaskSpec:
    """Dyck-k validity: ``length - 1`` brackets then a query token; label 1 valid / 0 invalid, half each.

    Negatives keep every bracket type's open and close counts equal to a valid word's, so counting alone
    cannot tell them apart.
    """
    if k < 2:
        raise ValueError(f"dyck needs k >= 2, got {k}")
    if length < 5 or (length - 1) % 2:
        raise ValueError(f"dyck needs an odd length >= 5 (even bracket count + query), got {length}")
    n_chars, query = length - 1, 2 * k

    def make(n: int, g: torch.Generator) -> TaskData:
        tokens = torch.empty(n, length, dtype=torch.long)
        labels = torch.empty(n, dtype=torch.long)
        for i in range(n):
            want_valid = i % 2 == 0
            while True:
                word = _random_dyck(n_chars, k, g)
                if not want_valid:
                    word = _balanced_negative(word, k, g)
                if word is not None:
                    break
            tokens[i, :n_chars] = torch.tensor(word)
            labels[i] = int(want_valid)
        tokens[:, -1] = query
        perm = torch.randperm(n, generator=g)
        tokens, labels = tokens[perm], labels[perm]
        targets = torch.zeros(n, length, dtype=torch.long)
        targets[:, -1] = labels
        mask = torch.zeros(n, length, dtype=torch.bool)
        mask[:, -1] = True
        return TaskData(tokens, targets, mask)

    return TaskSpec("dyck", length, query + 1, 2, {"k": k}, make)


# --- MQAR (Zoology) -----------------------------------------------------------------------------------------
#: the test slices (sequence length, key-value pairs) of Zoology's MQAR
MQAR_SLICES: tuple[tuple[int, int], ...] = ((64, 4), (128, 8), (256, 16), (256, 64), (512, 128))


def mqar_default_vocab(length: int) -> int:
    """Smallest power of two above ``length``, at least 128 (Zoology needs vocab > length; it uses 8192)."""
    return max(128, 1 << math.ceil(math.log2(length + 1)))


def mqar(length: int, pairs: int = 0, vocab_size: int = 0, power_a: float = 0.01) -> TaskSpec:
    """Multi-query associative recall as defined by Zoology.

    ``pairs`` key-value pairs come first (keys from ``1..V/2-1``, values from ``V/2..V-1``, both distinct),
    then every key is queried once in the remaining span at an even offset whose distance is drawn from the
    power law ``p(g) ~ g^(power_a - 1)``; the target at a query position is the key's value. Non-query
    positions hold uniform random tokens. ``pairs=0`` picks ``length // 16`` (the 64/4, 128/8, 256/16 slices).
    """
    pairs = pairs or max(1, length // 16)
    vocab_size = vocab_size or mqar_default_vocab(length)
    if length % 2 or pairs * 4 > length:
        raise ValueError(f"mqar needs an even length >= 4 * pairs, got length={length}, pairs={pairs}")
    if vocab_size <= length or vocab_size // 2 - 1 < pairs:
        raise ValueError(f"mqar needs vocab_size > length and >= 2 * (pairs + 1), got {vocab_size}")
    half, ctx = vocab_size // 2, 2 * pairs
    space = (length - ctx) // 2
    p = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)

    def make(n: int, g: torch.Generator) -> TaskData:
        keys = torch.rand(n, half - 1, generator=g).argsort(1)[:, :pairs] + 1
        values = torch.rand(n, vocab_size - half, generator=g).argsort(1)[:, :pairs] + half
        gaps = torch.multinomial(p.expand(n, -1).float(), pairs, replacement=False, generator=g)  # (N, pairs)
        tokens = _randint(g, 0, vocab_size, (n, length))
        tokens[:, 0:ctx:2] = keys
        tokens[:, 1:ctx:2] = values
        qpos = ctx + 2 * gaps
        tokens.scatter_(1, qpos, keys)
        targets = torch.zeros(n, length, dtype=torch.long)
        targets.scatter_(1, qpos, values)
        mask = torch.zeros(n, length, dtype=torch.bool)
        mask.scatter_(1, qpos, True)
        return TaskData(tokens, targets, mask)

    return TaskSpec("mqar", length, vocab_size, vocab_size, {"pairs": pairs, "vocab_size": vocab_size}, make,
                    answers=vocab_size - half)


# --- needle (RULER S-NIAH) ----------------------------------------------------------------------------------
def needle(length: int, n_keys: int = 16, n_values: int = 16, n_noise: int = 32) -> TaskSpec:
    """RULER-style single needle: noise, ``[key, value]`` at a random depth, then ``[QUERY, key]`` at the end.

    The target at the last step is the value. ``meta["depth"]`` holds the needle's relative depth in [0, 1).
    """
    if length < 5:
        raise ValueError(f"needle needs length >= 5, got {length}")
    k0, v0, q = n_noise, n_noise + n_keys, n_noise + n_keys + n_values
    hay = length - 2  # the last two positions are [QUERY, key]

    def make(n: int, g: torch.Generator) -> TaskData:
        tokens = _randint(g, 0, n_noise, (n, length))
        key = _randint(g, 0, n_keys, (n,))
        value = _randint(g, 0, n_values, (n,))
        pos = _randint(g, 0, hay - 1, (n,))
        rows = torch.arange(n)
        tokens[rows, pos] = k0 + key
        tokens[rows, pos + 1] = v0 + value
        tokens[:, -2] = q
        tokens[:, -1] = k0 + key
        targets = torch.zeros(n, length, dtype=torch.long)
        targets[:, -1] = value
        mask = torch.zeros(n, length, dtype=torch.bool)
        mask[:, -1] = True
        return TaskData(tokens, targets, mask, {"depth": pos.float() / (hay - 1)})

    return TaskSpec("needle", length, q + 1, n_values,
                    {"n_keys": n_keys, "n_values": n_values, "n_noise": n_noise}, make)


TASKS: dict[str, Callable[..., TaskSpec]] = {
    "delayed_recall": delayed_recall,
    "majority": majority,
    "dyck": dyck,
    "mqar": mqar,
    "needle": needle,
}

#: short lengths used when ``--lengths`` is not given
DEFAULT_LENGTHS: dict[str, int] = {"delayed_recall": 32, "majority": 32, "dyck": 33, "mqar": 64, "needle": 64}


def make_task(name: str, length: int | None = None, **options: int) -> TaskSpec:
    """Build task ``name`` at ``length`` (default: its short length); dyck rounds even lengths up to odd."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    length = DEFAULT_LENGTHS[name] if length is None else length
    if length <= 0:
        raise ValueError(f"length must be > 0, got {length}")
    if name == "dyck" and length % 2 == 0:
        length += 1
    return TASKS[name](length, **options)
