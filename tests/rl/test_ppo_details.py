"""PPO details against hand-computed numbers: GAE with truncation vs termination, per-minibatch advantage
normalisation, value clipping, one shared trunk pass, and the truncation bootstrap inside the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("torchrl")
pytest.importorskip("gymnasium")

from cortexmem.rl.gae import gae  # noqa: E402
from cortexmem.rl.loss import ppo_loss  # noqa: E402
from cortexmem.rl.ppo import PPOConfig, PPOTrainer  # noqa: E402

T_ = torch.tensor


def test_gae_hand_computed_truncation_and_termination():
    # env 0: truncated after step 1 (bootstraps from the final observation's value 0.9), terminated at step 3
    # env 1: no episode end; the rollout ends after step 3 and bootstraps from 0.5
    reward = T_([[1.0, 0.0, 2.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    value = T_([[0.5, 0.4, 0.3, 0.2], [0.0, 0.0, 0.0, 0.0]])
    next_value = T_([[0.4, 0.9, 0.2, 0.7], [0.0, 0.0, 0.0, 0.5]])
    terminated = T_([[False, False, False, True], [False] * 4])
    done = T_([[False, True, False, True], [False] * 4])
    adv, target = gae(reward, value, next_value, terminated, done, gamma=0.9, lmbda=0.8)
    # deltas env 0: 1 + .9*.4 - .5 = .86 ; 0 + .9*.9 - .4 = .41 ; 2 + .9*.2 - .3 = 1.88 ; 1 - .2 = .8 (no bootstrap)
    # A3 = .8 ; A2 = 1.88 + .72*.8 = 2.456 ; A1 = .41 (episode ended) ; A0 = .86 + .72*.41 = 1.1552
    # env 1: delta3 = 1 + .9*.5 = 1.45 ; A2 = .72*1.45 = 1.044 ; A1 = .75168 ; A0 = .5412096
    want = T_([[1.1552, 0.41, 2.456, 0.8], [0.5412096, 0.75168, 1.044, 1.45]])
    torch.testing.assert_close(adv, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(target, want + value, atol=1e-6, rtol=0)
    # treating the truncation as a termination (the old behaviour) changes A1 from .41 to -.4
    adv_wrong, _ = gae(reward, value, next_value, done, done, gamma=0.9, lmbda=0.8)
    assert abs(float(adv_wrong[0, 1]) - (-0.4)) < 1e-6


def test_gae_rejects_terminated_without_done():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="terminated step must also be done"):
        gae(z, z, z, T_([[True, False]]), T_([[False, False]]), 0.9, 0.9)
    with pytest.raises(ValueError, match="shape"):
        gae(z, z, torch.zeros(2, 1), z.bool(), z.bool(), 0.9, 0.9)


def _loss(**kw):
    base = dict(
        log_prob=torch.log(T_([1.1, 0.5])), old_log_prob=torch.zeros(2), advantage=T_([1.0, 3.0]),
        value=T_([1.0, -0.1]), old_value=torch.zeros(2), value_target=T_([2.0, 0.5]), entropy=T_([0.3, 0.5]),
        clip_epsilon=0.2, value_clip=None, normalize_advantage=True, critic_coeff=1.0, entropy_coeff=0.1,
    )
    return ppo_loss(**{**base, **kw})


def test_ppo_loss_minibatch_normalisation_hand_computed():
    # advantages [1, 3] normalise (within this minibatch) to [-1, 1]; ratios [1.1, 0.5], eps 0.2:
    # min(1.1 * -1, 1.1 * -1) = -1.1 ; min(0.5 * 1, 0.8 * 1) = 0.5 -> loss = -(-1.1 + 0.5) / 2 = 0.3
    out = _loss()
    assert abs(float(out["loss_objective"]) - 0.3) < 1e-6
    # without normalisation: min(1.1, 1.2) = 1.1 ; min(1.5, 2.4) = 1.5 -> loss = -1.3
    assert abs(float(_loss(normalize_advantage=False)["loss_objective"]) + 1.3) < 1e-6
    assert abs(float(out["loss_entropy"]) + 0.1 * 0.4) < 1e-7
    assert abs(float(out["clip_fraction"]) - 0.5) < 1e-7  # ratio 0.5 is outside [0.8, 1.2]


def test_ppo_loss_value_clipping_hand_computed():
    # unclipped squared errors: (1 - 2)^2 = 1, (-.1 - .5)^2 = .36 -> 0.5 * mean = 0.34
    assert abs(float(_loss()["loss_critic"]) - 0.34) < 1e-6
    # clip 0.2 around old value 0: v -> [0.2, -0.1]; errors [3.24, .36]; max with unclipped -> [3.24, .36]
    assert abs(float(_loss(value_clip=0.2)["loss_critic"]) - 0.9) < 1e-6


def _trainer(**kw) -> PPOTrainer:
    base = dict(env="cortexmem/RepeatK-v0", env_kwargs={"k": 1, "n": 2, "length": 16, "max_episode_steps": 5},
                stack="gru", d_hidden=8, frames=64, num_envs=3, rollout_len=16, bptt=8, epochs=1, minibatches=2,
                seed=3)
    return PPOTrainer(PPOConfig(**{**base, **kw}))


def test_one_trunk_pass_feeds_actor_and_critic():
    trainer = _trainer()
    batch, starts, _, _ = trainer.collect()
    calls = []
    handle = trainer.policy.stack.register_forward_hook(lambda *a: calls.append(1))
    out = trainer.minibatch_loss(batch.reshape(-1, 8), starts.reshape(-1))
    handle.remove()
    assert len(calls) == 1
    stack_params = [p for p in trainer.policy.stack.parameters() if p.requires_grad]
    for term in ("loss_objective", "loss_critic"):
        grads = torch.autograd.grad(out[term], stack_params, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{term} does not reach the trunk"


def test_truncation_bootstraps_from_final_observation():
    """At a time limit the target uses V(final observation, memory carried to it), not V(reset observation)."""
    trainer = _trainer()
    finals: dict[tuple[int, int], np.ndarray] = {}
    step, t = trainer.envs.step, [0]

    def spy(action):
        out = step(action)
        for i in np.flatnonzero(out[3]):
            finals[(int(i), t[0])] = out[4]["final_obs"][i]
        t[0] += 1
        return out

    trainer.envs.step = spy
    batch, _, _, _ = trainer.collect()
    trunc = batch["truncated"]
    assert trunc.any() and not batch["terminated"].any(), "RepeatK with length 16 and a 5-step limit only truncates"
    policy = trainer.policy
    with torch.no_grad():
        for i, s in zip(*torch.nonzero(trunc).T.tolist(), strict=True):
            start = max(j for j in range(s + 1) if batch["is_init"][i, j])
            obs = torch.cat([batch["observation"][i, start : s + 1], torch.as_tensor(finals[(i, s)])[None]])
            features, _ = policy.trunk(obs[None], policy.initial_state(1), None)  # episode from a fresh state
            want = float(policy.value(features)[0, -1])
            assert abs(float(batch["next_value"][i, s]) - want) < 1e-5
            if s + 1 < batch.shape[1]:
                assert abs(float(batch["next_value"][i, s]) - float(batch["value"][i, s + 1])) > 1e-6
    # and the advantages are GAE of the stored fields, with bootstrapping kept at truncations
    g, lam = trainer.cfg.gamma, trainer.cfg.lmbda
    for i in range(batch.shape[0]):
        running = 0.0
        for s in reversed(range(batch.shape[1])):
            r, v, nv = (float(batch[k][i, s]) for k in ("reward", "value", "next_value"))
            running = r + g * nv - v + g * lam * (0.0 if bool(batch["done"][i, s]) else running)
            assert abs(float(batch["advantage"][i, s]) - running) < 1e-5
