"""Generator labels against brute-force oracles, loss masks, split determinism, bad arguments."""

from collections import Counter

import pytest
import torch

from cortexmem.evals.tasks import MQAR_SLICES, TEST, TRAIN, make_task


def _rows(spec, n=64, seed=3, split=TRAIN):
    d = spec.split(split, n, seed)
    assert d.tokens.shape == d.targets.shape == d.mask.shape == (n, spec.length)
    assert d.tokens.dtype == torch.long and d.mask.dtype == torch.bool
    assert 0 <= d.tokens.min() and d.tokens.max() < spec.vocab_size
    assert 0 <= d.targets.min() and d.targets.max() < spec.num_classes
    return d


def test_delayed_recall_oracle():
    spec = make_task("delayed_recall", 20)
    d = _rows(spec)
    for tok, tgt, m in zip(d.tokens.tolist(), d.targets.tolist(), d.mask.tolist(), strict=True):
        assert m == [False] * 19 + [True]
        assert tgt[-1] == tok[0] < 4
        assert all(4 <= t < 8 for t in tok[1:-1]) and tok[-1] == 8


@pytest.mark.parametrize("per_step", [0, 1])
def test_majority_oracle(per_step):
    spec = make_task("majority", 15, n_symbols=3, per_step=per_step)
    d = _rows(spec, n=200)
    for tok, tgt, m in zip(d.tokens.tolist(), d.targets.tolist(), d.mask.tolist(), strict=True):
        final = Counter(tok).most_common()
        assert len(final) == 1 or final[0][1] > final[1][1], "final majority must be unique"
        assert tgt[-1] == final[0][0]
        assert m == ([True] * 15 if per_step else [False] * 14 + [True])
        if per_step:
            for t in range(15):
                c = Counter(tok[: t + 1])
                best = max(c.values())
                assert tgt[t] == min(s for s, v in c.items() if v == best)


def _valid_by_reduction(word, k):
    # An independent oracle: repeatedly delete adjacent matched pairs; valid iff nothing is left.
    s = "".join("([{<"[t] if t < k else ")]}>"[t - k] for t in word)
    pairs = ["()", "[]", "{}", "<>"][:k]
    while True:
        n = len(s)
        for p in pairs:
            s = s.replace(p, "")
        if len(s) == n:
            return s == ""


@pytest.mark.parametrize("k", [2, 3])
def test_dyck_oracle_and_balanced_negatives(k):
    spec = make_task("dyck", 17, k=k)
    d = _rows(spec, n=200)
    labels = d.targets[:, -1]
    assert labels.sum().item() == 100, "half positives, half negatives"
    assert (d.mask.sum(1) == 1).all() and d.mask[:, -1].all()
    for tok, lab in zip(d.tokens.tolist(), labels.tolist(), strict=True):
        word = tok[:-1]
        assert tok[-1] == 2 * k
        assert _valid_by_reduction(word, k) == bool(lab)
        c = Counter(word)
        assert all(c[i] == c[k + i] for i in range(k)), "every bracket type's counts stay balanced"


def test_dyck_negatives_not_solvable_by_counting():
    d = make_task("dyck", 21).split(TRAIN, 200, 0)
    counts = torch.stack([(d.tokens[:, :-1] == t).sum(1) for t in range(4)], 1)
    pos, neg = counts[d.targets[:, -1] == 1], counts[d.targets[:, -1] == 0]
    shared = {tuple(r) for r in pos.tolist()} & {tuple(r) for r in neg.tolist()}
    assert shared, "some count profiles occur in both classes"


@pytest.mark.parametrize("length,pairs", [(64, 4), (128, 8), (256, 64)])
def test_mqar_oracle(length, pairs):
    spec = make_task("mqar", length, pairs=pairs)
    d = _rows(spec, n=32)
    V = spec.vocab_size
    assert V > length
    for tok, tgt, m in zip(d.tokens.tolist(), d.targets.tolist(), d.mask.tolist(), strict=True):
        kv = {tok[2 * i]: tok[2 * i + 1] for i in range(pairs)}
        assert len(kv) == pairs
        assert all(1 <= k < V // 2 for k in kv) and all(V // 2 <= v < V for v in kv.values())
        queries = [t for t in range(length) if m[t]]
        assert len(queries) == pairs
        assert sorted(tok[q] for q in queries) == sorted(kv)
        for q in queries:
            assert q >= 2 * pairs and (q - 2 * pairs) % 2 == 0
            assert tgt[q] == kv[tok[q]]


def test_mqar_power_law_prefers_short_gaps():
    d = make_task("mqar", 256, pairs=16).split(TRAIN, 64, 0)
    q = d.mask.nonzero()[:, 1].float() - 32
    assert (q < 112).float().mean() > 0.5


def test_mqar_zoology_slices_build():
    for L, p in MQAR_SLICES:
        spec = make_task("mqar", L, pairs=p)
        assert spec.split(TEST, 2, 0).mask.sum().item() == 2 * p


def test_needle_oracle():
    spec = make_task("needle", 40)
    d = _rows(spec, n=100)
    k0, v0 = 32, 48
    for i, (tok, tgt) in enumerate(zip(d.tokens.tolist(), d.targets.tolist(), strict=True)):
        hay = tok[:-2]
        keys = [t for t, x in enumerate(hay) if k0 <= x < v0]
        assert len(keys) == 1
        p = keys[0]
        assert tok[-2] == 64 and tok[-1] == hay[p]
        assert tgt[-1] == hay[p + 1] - v0
        assert d.meta["depth"][i].item() == pytest.approx(p / 37)
    assert d.mask[:, -1].all() and d.mask.sum().item() == 100


@pytest.mark.parametrize("name", ["delayed_recall", "majority", "dyck", "mqar", "needle"])
def test_splits_are_deterministic_and_disjoint_streams(name):
    spec = make_task(name)
    a, b = spec.split(TRAIN, 16, 7), spec.split(TRAIN, 16, 7)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.tokens, spec.split(TEST, 16, 7).tokens)
    assert not torch.equal(a.tokens, spec.split(TRAIN, 16, 8).tokens)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown task 'nope'; valid: delayed_recall"):
        make_task("nope")
    with pytest.raises(ValueError, match="length must be > 0"):
        make_task("majority", 0)
    with pytest.raises(ValueError, match="4 \\* pairs"):
        make_task("mqar", 64, pairs=32)
    with pytest.raises(ValueError, match="k >= 2"):
        make_task("dyck", 9, k=1)
    with pytest.raises(ValueError, match="split must be"):
        make_task("needle").split("val", 4, 0)
