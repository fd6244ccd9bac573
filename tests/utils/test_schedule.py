"""The shared warm-up + cosine learning-rate multiplier, and the NIAH trainer annealing by the clock."""

from __future__ import annotations

import math

import pytest

from cortexmem.utils.schedule import warmup_cosine


def test_warmup_then_cosine_to_the_floor():
    assert [warmup_cosine(s, 100, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(4, 100, 4) == pytest.approx(1.0)
    mid = 4 + (100 - 4) // 2
    assert warmup_cosine(mid, 100, 4) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(100, 100, 4) == pytest.approx(0.1)
    assert warmup_cosine(500, 100, 4, floor=0.0) == pytest.approx(0.0)  # past the end: stays at the floor
    assert warmup_cosine(0, 10, 0, floor=0.2) == pytest.approx(1.0)  # no warm-up


def test_time_progress_moves_the_cosine_on_but_never_back():
    # a run stopped by its time budget at step 50 of 1000 ends annealed
    assert warmup_cosine(50, 1000, 10, progress=1.0) == pytest.approx(0.1)
    assert warmup_cosine(50, 1000, 10, progress=0.5) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    # the step count further along than the clock wins
    assert warmup_cosine(1000, 1000, 10, progress=0.1) == pytest.approx(0.1)
    # warm-up is by steps only
    assert warmup_cosine(0, 1000, 10, progress=0.9) == pytest.approx(0.1)


def test_niah_lr_follows_the_time_budget():
    from cortexmem.llm.train import TrainNiahConfig, _lr_at

    cfg = TrainNiahConfig(steps=1000, lr=1e-3, warmup=10, time_limit_s=100.0)
    assert _lr_at(100, cfg, elapsed_s=100.0) == pytest.approx(1e-4)  # the clock ran out: annealed
    assert _lr_at(100, cfg, elapsed_s=0.0) == pytest.approx(1e-3 * warmup_cosine(100, 1000, 10))
    no_limit = TrainNiahConfig(steps=1000, lr=1e-3, warmup=10)
    assert _lr_at(100, no_limit, elapsed_s=1e9) == pytest.approx(1e-3 * warmup_cosine(100, 1000, 10))
