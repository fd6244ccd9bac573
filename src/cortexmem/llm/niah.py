"""Needle-in-a-haystack samples: real or generated filler or random tokens, distractor pairs, needle at a depth.

Text mode: ``"The secret code of <name> is <digits>."`` hidden at ``depth`` among filler and among distractor
sentences of the same form for other names (RULER's multi-key NIAH when there are any); the context ends with
``"What is the secret code of <name>? The secret code of <name> is"`` and the answer is ``" <digits>"``. Filler is
real prose (``haystack="prose"``: standard-library docstrings, ``corpus.py``) or sentences from a grammar with
thousands of distinct sentences. Names, prose passages and (``heldout_template=True``) the needle's wording are
split into disjoint train and eval pools so evaluation is held out.
Token mode (tests, no tokenizer): ``KEY k VAL v`` pairs in random filler, question ``QUERY k VAL`` -> ``v``.
"""

from __future__ import annotations

import random
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .tokenizer import encode_plain

Split = Literal["train", "eval"]

_SYL = ["ka", "lo", "mi", "ra", "te", "vo", "su", "ne", "di", "ba", "zu", "fe", "go", "hi", "ja", "pe", "qui",
        "ro", "sa", "tu", "wi", "xe", "yo", "el", "an", "or", "is", "um"]
_PEOPLE = ["the baker", "a farmer", "the old captain", "my neighbour", "the young doctor", "a tired student",
           "the mayor", "her brother", "the librarian", "a stranger", "the engineer", "his aunt", "the painter",
           "a fisherman", "the teacher", "our guide", "the nurse", "a musician", "the gardener", "the pilot"]
_VERBS = ["carried", "painted", "repaired", "found", "sold", "borrowed", "described", "forgot", "noticed",
          "cleaned", "measured", "hid", "wrapped", "counted", "photographed", "returned", "tasted", "built"]
_OBJECTS = ["a wooden chair", "the blue kettle", "three apples", "an old map", "the broken clock", "a letter",
            "the bicycle", "a basket of bread", "the iron gate", "two candles", "a small boat", "the red scarf",
            "a jar of honey", "the garden hose", "a pair of boots", "the silver spoon", "a stack of books"]
_PLACES = ["near the river", "in the market", "behind the station", "at the harbour", "on the hill",
           "inside the museum", "by the bakery", "under the bridge", "in the village square", "at the farm",
           "along the coast", "in the attic", "beside the lake", "at the library", "in the forest"]
_TIMES = ["on Monday", "before sunrise", "last winter", "after lunch", "in the evening", "during the storm",
          "at noon", "on a quiet Sunday", "early in spring", "late at night", "the day before", "in autumn"]
_ADJ = ["cold", "bright", "quiet", "busy", "windy", "grey", "warm", "strange", "calm", "noisy", "pleasant"]
_TOPICS = ["weather", "harvest", "old roads", "the festival", "local history", "the new bridge", "trade",
           "bird songs", "the river", "recipes", "the school", "boats", "music", "the mountains"]
_TEMPLATES = [
    "{P} {V} {O} {L} {T}.",
    "{T}, {p} {V} {O}.",
    "It was a {A} day {L}, and {p} {V} {O}.",
    "Nobody knew why {p} {V} {O} {T}.",
    "The talk {L} was mostly about {S}.",
    "{P} said the {S} had been {A} this year.",
    "{P} walked {L} and thought about {S}.",
    "There were {N} people {L} {T}.",
    "{P} {V} {O}, then went home.",
    "Some said {p} {V} {O} {L}; others did not believe it.",
    "{T} the sky was {A} and the streets were {A2}.",
    "According to {p}, {S} mattered more than anything {L}.",
    "{P} kept {O} {L} for {N} days.",
    "The story of {S} was told again {T}.",
]


def name_pool(split: Split) -> list[str]:
    """Disjoint pools of synthetic names (about 4/5 train, 1/5 eval)."""
    names = [(a + b + c).capitalize() for a in _SYL for b in _SYL for c in ("n", "s", "th", "ra", "")]
    keep = 0 if split == "eval" else 1
    return [n for n in names if (zlib.crc32(n.encode()) % 5 != 0) == bool(keep)]


def filler_sentence(rng: random.Random) -> str:
    """One sentence from the filler grammar."""
    t = rng.choice(_TEMPLATES)
    person = rng.choice(_PEOPLE)
    return t.format(
        P=person[0].upper() + person[1:], p=rng.choice(_PEOPLE), V=rng.choice(_VERBS), O=rng.choice(_OBJECTS),
        L=rng.choice(_PLACES), T=rng.choice(_TIMES), A=rng.choice(_ADJ), A2=rng.choice(_ADJ),
        S=rng.choice(_TOPICS), N=rng.randint(2, 90),
    ).replace("  ", " ")


#: needle wordings ``(lead, noun)``: "<lead>the <noun> of <name> is <code>." asked as "What is the <noun> of <name>?"
NEEDLE_FORMS: dict[str, list[tuple[str, str]]] = {
    "train": [("", "secret code"), ("Remember that ", "access code"), ("Note: ", "locker number"),
              ("For the record, ", "account number"), ("", "room code"), ("We were told that ", "ticket number")],
    "eval": [("Keep in mind that ", "vault code"), ("", "badge number")],
}


def needle_sentence(name: str, code: str, form: tuple[str, str] = ("", "secret code")) -> str:
    lead, noun = form
    the = "the" if lead else "The"
    return f"{lead}{the} {noun} of {name} is {code}."


def question_text(name: str, form: tuple[str, str] = ("", "secret code")) -> str:
    noun = form[1]
    return f" What is the {noun} of {name}? The {noun} of {name} is"


def plain_document(rng: random.Random, n_chars: int, digits: int = 6, split: Split = "train") -> str:
    """Filler with a few facts and questions answered from facts earlier in the same document."""
    names = name_pool(split)
    facts: list[tuple[str, str]] = []
    parts: list[str] = []
    size = 0
    while size < n_chars:
        r = rng.random()
        if r < 0.15:
            name, code = rng.choice(names), "".join(rng.choice("0123456789") for _ in range(digits))
            facts.append((name, code))
            s = " " + needle_sentence(name, code)
        elif r < 0.25 and facts:
            name, code = rng.choice(facts[-4:])
            s = question_text(name) + f" {code}."
        else:
            s = " " + filler_sentence(rng)
        parts.append(s)
        size += len(s)
    return "".join(parts)[:n_chars]


@dataclass
class NiahSample:
    """``context`` ids (a list, or an int64 array for prose haystacks; ends with the question), ``answer`` ids,
    where the needle starts and its length, depth.

    ``distractors``: ``(start, length)`` of every distractor pair/sentence (same form as the needle).
    """

    context: list[int]
    answer: list[int]
    needle_pos: int
    depth: float
    needle_len: int = 0
    distractors: list[tuple[int, int]] = field(default_factory=list)


class NiahTask(ABC):
    """Base class: ``sample(rng, length, depth, split)`` and ``chance`` (accuracy of a uniform guess)."""

    chance: float

    @abstractmethod
    def sample(self, rng: random.Random, length: int, depth: float, split: Split) -> NiahSample:
        """One sample whose context + answer is exactly ``length`` tokens.

        Counting the answer in ``length`` keeps question and answer in the same base-model chunk when ``length``
        is a multiple of the chunk size, as in generation (where the prompt's last chunk is continued).
        """

    @abstractmethod
    def plain_text(self, rng: random.Random, length: int, split: Split) -> list[int]:
        """``length`` token ids of plain text from the task's world (no question at the end): no-harm training."""

    def batch(self, rng: random.Random, batch: int, length: int, depth: float | tuple[float, float] | None,
              split: Split, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[NiahSample]]:
        """``(input_ids, labels, samples)``: context + answer, labels only on answer tokens, right-padded.

        ``depth``: a fixed depth, a ``(lo, hi)`` range drawn per sample, or ``None`` for ``(0, 1)``.
        """
        lo, hi = (0.0, 1.0) if depth is None else (depth, depth) if isinstance(depth, float | int) else depth
        samples = [self.sample(rng, length, rng.uniform(lo, hi), split) for _ in range(batch)]
        return (*stack_samples(samples, pad_id), samples)


def stack_samples(samples: list[NiahSample], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)`` of context + answer, labels on the answer tokens only, right-padded."""
    width = max(len(s.context) + len(s.answer) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), -100, dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s.context) + len(s.answer)
        ids[i, :n] = torch.from_numpy(np.concatenate([np.asarray(s.context, dtype=np.int64),
                                                      np.asarray(s.answer, dtype=np.int64)]))
        labels[i, len(s.context):n] = torch.tensor(s.answer)
    return ids, labels


def needle_mask(ids: torch.Tensor, samples: list[NiahSample], *, distractors: bool = False) -> torch.Tensor:
    """``[B, T]`` bool, True on each row's needle (and on its distractor spans with ``distractors``)."""
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for i, s in enumerate(samples):
        for start, n in [(s.needle_pos, s.needle_len)] + (list(s.distractors) if distractors else []):
            mask[i, start:start + n] = True
    return mask


class TextNiah(NiahTask):
    """Needle sentence in filler with ``n_distractors`` same-form sentences for other names.

    ``haystack``: ``"grammar"`` (generated sentences) or ``"prose"`` (standard-library docstrings, split train /
    eval by passage). ``heldout_template``: eval samples word the needle and question with ``NEEDLE_FORMS["eval"]``,
    training samples with ``NEEDLE_FORMS["train"]`` (off: every sample uses "The secret code of ..."). The number
    of distractors is fixed per sample, whatever the length: longer contexts add filler only. With
    ``n_distractors >= 3`` this is RULER's multi-key NIAH (``n_distractors + 1`` keys, one asked).
    """

    def __init__(self, tokenizer: Any, *, digits: int = 6, n_distractors: int = 4,
                 haystack: Literal["grammar", "prose"] = "grammar", heldout_template: bool = False) -> None:
        if digits < 1:
            raise ValueError(f"digits must be >= 1, got {digits}")
        if n_distractors < 0:
            raise ValueError(f"n_distractors must be >= 0, got {n_distractors}")
        if haystack not in ("grammar", "prose"):
            raise ValueError(f"haystack must be 'grammar' or 'prose', got {haystack!r}")
        self.tok, self.digits, self.n_distractors = tokenizer, digits, n_distractors
        self.haystack, self.heldout_template = haystack, heldout_template
        self.chance = 10.0 ** -digits
        self._pools = {s: name_pool(s) for s in ("train", "eval")}
        self._enc_cache: dict[str, list[int]] = {}

    @property
    def n_keys(self) -> int:
        return 1 + self.n_distractors

    def _enc(self, text: str) -> list[int]:
        out = self._enc_cache.get(text)
        if out is None:
            out = self._enc_cache[text] = encode_plain(self.tok, text)
        return out

    def _corpus(self, split: Split):
        from .corpus import stdlib_corpus

        return stdlib_corpus(self.tok, split)

    def _filler(self, rng: random.Random, budget: int, split: Split) -> list[Any]:
        if self.haystack == "prose":
            return self._corpus(split).draw(np.random.default_rng(rng.getrandbits(63)), budget)
        filler: list[list[int]] = []
        used = 0
        while used < budget:
            piece = encode_plain(self.tok, " " + filler_sentence(rng))[: budget - used]
            filler.append(piece)
            used += len(piece)
        return filler

    def sample(self, rng: random.Random, length: int, depth: float, split: Split) -> NiahSample:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth must be in [0, 1], got {depth}")
        pool = self._pools[split]
        names = rng.sample(pool, 1 + self.n_distractors)
        codes = ["".join(rng.choice("0123456789") for _ in range(self.digits)) for _ in names]
        form = rng.choice(NEEDLE_FORMS[split]) if self.heldout_template else ("", "secret code")
        question = self._enc(question_text(names[0], form))
        answer = encode_plain(self.tok, " " + codes[0])
        needle = encode_plain(self.tok, " " + needle_sentence(names[0], codes[0], form))
        distract = [encode_plain(self.tok, " " + needle_sentence(n, c, form))
                    for n, c in zip(names[1:], codes[1:], strict=True)]
        budget = length - len(answer) - len(question) - len(needle) - sum(map(len, distract))
        if budget < 0:
            raise ValueError(f"length {length} is too short for the needle, distractors and question")
        filler = self._filler(rng, budget, split)
        slots = len(filler)
        for d in distract:
            filler.insert(rng.randint(0, slots), d)
        at = round(depth * len(filler))
        pieces = filler[:at] + [needle] + filler[at:]
        pos = sum(map(len, filler[:at]))
        spans, start = [], 0
        distract_ids = {id(d) for d in distract}
        for p in pieces:
            if id(p) in distract_ids:
                spans.append((start, len(p)))
            start += len(p)
        if self.haystack == "prose":
            context: Any = np.concatenate([np.asarray(p, dtype=np.int64) for p in pieces] + [np.asarray(question)])
        else:
            context = [t for p in pieces for t in p] + question
        return NiahSample(context, answer, pos, depth, len(needle), spans)

    def plain_text(self, rng: random.Random, length: int, split: Split) -> list[int]:
        if self.haystack == "prose":
            return self._corpus(split).text(np.random.default_rng(rng.getrandbits(63)), length).tolist()
        out: list[int] = []
        while len(out) < length:
            out += encode_plain(self.tok, plain_document(rng, max(64, length - len(out)), self.digits, split))
        return out[:length]


class TokenNiah(NiahTask):
    """Random-token haystack: ``KEY k VAL v`` pairs (one needle + distractors), question ``QUERY k VAL``."""

    KEY, VAL, QUERY = 1, 2, 3

    def __init__(self, vocab_size: int, *, n_keys: int = 16, n_values: int = 16, n_distractors: int = 2) -> None:
        self.n_keys, self.n_values, self.n_distractors = n_keys, n_values, n_distractors
        self.key0, self.val0 = 4, 4 + n_keys
        self.fill0 = self.val0 + n_values
        if self.fill0 + 8 > vocab_size:
            raise ValueError(f"vocab_size {vocab_size} too small for {n_keys} keys and {n_values} values")
        if n_distractors + 1 > n_keys:
            raise ValueError(f"need n_keys > n_distractors, got {n_keys} and {n_distractors}")
        self.vocab_size = vocab_size
        self.chance = 1.0 / n_values

    def sample(self, rng: random.Random, length: int, depth: float, split: Split) -> NiahSample:
        # every sample draws fresh key-value bindings, so held-out means fresh draws (the callers seed the eval
        # generator apart from the training one); nothing about a binding carries over between samples
        keys = rng.sample(range(self.n_keys), 1 + self.n_distractors)
        vals = [rng.randrange(self.n_values) for _ in keys]
        pairs = [[self.KEY, self.key0 + k, self.VAL, self.val0 + v] for k, v in zip(keys, vals, strict=True)]
        question = [self.QUERY, self.key0 + keys[0], self.VAL]
        n_fill = length - 1 - len(question) - 4 * len(pairs)
        if n_fill < 0:
            raise ValueError(f"length {length} too short for {len(pairs)} pairs and the question")
        fill = [rng.randrange(self.fill0, self.vocab_size) for _ in range(n_fill)]
        at = round(depth * n_fill)
        others = sorted(rng.randint(0, n_fill) for _ in pairs[1:])
        seq: list[int] = []
        needle_pos = 0
        spans = []
        cuts = sorted([(at, 0)] + [(o, i + 1) for i, o in enumerate(others)])
        prev = 0
        for pos, which in cuts:
            seq += fill[prev:pos]
            if which == 0:
                needle_pos = len(seq)
            else:
                spans.append((len(seq), 4))
            seq += pairs[which]
            prev = pos
        seq += fill[prev:] + question
        return NiahSample(seq, [self.val0 + vals[0]], needle_pos, depth, 4, spans)

    def plain_text(self, rng: random.Random, length: int, split: Split) -> list[int]:
        return [rng.randrange(self.fill0, self.vocab_size) for _ in range(length)]
