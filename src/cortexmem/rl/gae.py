"""Generalised advantage estimation with truncation kept apart from termination.

``next_value[t]`` is the value of the observation that followed step ``t``: at a truncation (time limit) that is
the episode's final observation, not the auto-reset one. Termination stops bootstrapping; any episode end
(``done``) stops the advantage from flowing back across it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gae(
    reward: Tensor, value: Tensor, next_value: Tensor, terminated: Tensor, done: Tensor, gamma: float, lmbda: float
) -> tuple[Tensor, Tensor]:
    """All ``[N, T]`` (time last) -> ``(advantage, value_target = advantage + value)``.

    ``delta_t = r_t + gamma * (1 - terminated_t) * next_value_t - value_t``;
    ``A_t = delta_t + gamma * lmbda * (1 - done_t) * A_{t+1}``.
    """
    shape = reward.shape
    for name, t in (("value", value), ("next_value", next_value), ("terminated", terminated), ("done", done)):
        if t.shape != shape:
            raise ValueError(f"gae: {name} must have the reward's shape {list(shape)}, got {list(t.shape)}")
    if not bool((done | ~terminated.bool()).all()):
        raise ValueError("gae: every terminated step must also be done")
    keep = 1.0 - terminated.float()
    cont = 1.0 - done.float()
    delta = reward + gamma * keep * next_value - value
    adv = torch.zeros_like(delta)
    running = torch.zeros_like(delta[..., 0])
    for t in range(shape[-1] - 1, -1, -1):
        running = delta[..., t] + gamma * lmbda * cont[..., t] * running
        adv[..., t] = running
    return adv, adv + value
