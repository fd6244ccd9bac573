"""Recurrent PPO with policy, value and memory on CUDA: replay == rollout, bf16 autocast, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu
pytest.importorskip("torchrl")
pytest.importorskip("gymnasium")

from cortexmem.rl.ppo import PPOConfig, PPOTrainer  # noqa: E402

BASE = dict(env="cortexmem/RepeatK-v0", env_kwargs={"k": 2, "n": 3, "length": 7, "max_episode_steps": 5},
            d_hidden=32, frames=2048, num_envs=64, rollout_len=16, bptt=8, epochs=1, minibatches=4, device="cuda")


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("stack", ["lstm", "gru", "D", "GD", "AXMS"])
def test_cuda_replay_matches_rollout_and_trains(stack, amp):
    trainer = PPOTrainer(PPOConfig(**BASE, stack=stack, amp=amp))
    assert next(trainer.policy.parameters()).device.type == "cuda"
    batch, starts, _, _ = trainer.collect()
    assert batch["truncated"].any()
    seqs, starts = batch.reshape(-1, 8), starts.reshape(-1)
    with torch.no_grad():
        out = trainer.minibatch_loss(seqs, starts)
    # bf16 autocast: step mode and sequence mode may round differently, so the first ratio is only close to 1
    assert abs(float(out["kl_approx"])) < (1e-3 if amp else 1e-5), float(out["kl_approx"])
    summary = trainer.train(progress=False)
    assert summary["frames_per_second"] > 0 and summary["device"].startswith("cuda")
    rec = trainer.history[-1]
    assert all(torch.isfinite(torch.tensor(rec[k])) for k in ("loss_objective", "loss_critic", "grad_norm"))


def test_cuda_checkpoint_resumes_on_cpu(tmp_path):
    trainer = PPOTrainer(PPOConfig(**{**BASE, "frames": 1024}, stack="gru"), tmp_path)
    trainer.train(progress=False)
    on_cpu = PPOTrainer.load(tmp_path / "checkpoint", overrides={"device": "cpu", "frames": 2048})
    for (k, a), (_, b) in zip(trainer.policy.state_dict().items(), on_cpu.policy.state_dict().items(), strict=True):
        assert torch.equal(a.cpu(), b), k
    on_cpu.train(progress=False)
    assert on_cpu.frames == 2048
    back = PPOTrainer.load(tmp_path / "checkpoint", overrides={"device": "cuda", "frames": 3072})
    back.train(progress=False)
    assert back.frames == 3072
