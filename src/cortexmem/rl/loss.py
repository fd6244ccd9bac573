"""The PPO loss on one minibatch: clipped surrogate, (optionally clipped) value loss, entropy bonus."""

from __future__ import annotations

import torch
from torch import Tensor


def normalize(adv: Tensor, eps: float = 1e-8) -> Tensor:
    """Advantages of one minibatch to zero mean, unit (population) std."""
    return (adv - adv.mean()) / (adv.std(unbiased=False) + eps)


def ppo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantage: Tensor,
    value: Tensor,
    old_value: Tensor,
    value_target: Tensor,
    entropy: Tensor,
    *,
    clip_epsilon: float,
    value_clip: float | None,
    normalize_advantage: bool,
    critic_coeff: float,
    entropy_coeff: float,
) -> dict[str, Tensor]:
    """All inputs share one shape (the minibatch's steps). Returns the loss terms and diagnostics.

    ``policy = -mean(min(rho * A, clip(rho, 1 - eps, 1 + eps) * A))``, ``rho = exp(log_prob - old_log_prob)``;
    ``critic = 0.5 * mean((v - R)^2)`` or, with ``value_clip = c``,
    ``0.5 * mean(max((v - R)^2, (v_old + clip(v - v_old, -c, c) - R)^2))``; ``entropy = -mean(H)``.
    """
    adv = normalize(advantage) if normalize_advantage else advantage
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_epsilon, 1 + clip_epsilon) * adv)
    err = (value - value_target).pow(2)
    if value_clip is not None:
        clipped = old_value + (value - old_value).clamp(-value_clip, value_clip)
        err = torch.max(err, (clipped - value_target).pow(2))
    out = {
        "loss_objective": -surrogate.mean(),
        "loss_critic": critic_coeff * 0.5 * err.mean(),
        "loss_entropy": -entropy_coeff * entropy.mean(),
    }
    with torch.no_grad():
        out["entropy"] = entropy.mean()
        out["kl_approx"] = ((ratio - 1) - log_ratio).mean()  # non-negative estimator of KL(old || new)
        out["clip_fraction"] = ((ratio - 1).abs() > clip_epsilon).float().mean()
    return out
