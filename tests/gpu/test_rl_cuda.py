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


@pytest.mark.parametrize("amp", [False, True])
def test_cuda_graph_rollout_matches_eager_on_cuda(amp):
    """On the GPU, the captured rollout step gives the eager policy's rollout (amp: within bf16 rounding)."""
    batches = []
    for graph in ("off", "on"):
        torch.manual_seed(0)
        trainer = PPOTrainer(PPOConfig(env="cortexmem/RepeatK-v0", env_kwargs={"k": 2, "n": 2, "length": 16},
                                       stack="AXMS", d_hidden=32, frames=256, num_envs=4, rollout_len=24, bptt=8,
                                       epochs=1, minibatches=2, device="cuda", amp=amp, step_graph=graph))
        batches.append(trainer.collect()[0])
        assert (trainer._runner is not None) == (graph == "on")
    tol, steps = (3e-2, 4) if amp else (1e-4, 24)  # bf16: a rounding flip may change a sampled action later on
    for key in ("value", "log_prob"):
        torch.testing.assert_close(batches[1][key][:, :steps], batches[0][key][:, :steps], rtol=tol, atol=tol,
                                   msg=key)
