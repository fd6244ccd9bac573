"""Learning-rate schedule shared by the trainers: linear warm-up, then a cosine down to a floor."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int, *, floor: float = 0.1, progress: float = 0.0) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based).

    Linear warm-up over the first ``warmup`` steps, then a cosine from 1 down to ``floor`` at step ``total``.
    ``progress`` in ``[0, 1]`` (the elapsed share of a time budget, say) moves the cosine on when it is further
    along than the step count, so a run that a time limit stops before ``total`` still ends annealed.
    """
    if step < warmup:
        return (step + 1) / warmup
    frac = max((step - warmup) / max(1, total - warmup), progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
