"""Recurrent PPO: learns a memory task, replays rollouts exactly, checkpoints and resumes, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("torchrl")
gym = pytest.importorskip("gymnasium")
from typer.testing import CliRunner  # noqa: E402

from cortexmem.cli import app  # noqa: E402
from cortexmem.rl.policy import RecurrentPolicy  # noqa: E402
from cortexmem.rl.ppo import PPOConfig, PPOTrainer  # noqa: E402
from cortexmem.rl.stacks import resolve_stack  # noqa: E402

REPEAT = {"env": "cortexmem/RepeatK-v0", "env_kwargs": {"k": 2, "n": 2, "length": 16}}


def _tiny(**kw) -> PPOConfig:
    base = {
        **REPEAT,
        "stack": "lstm_plain",
        "d_hidden": 16,
        "frames": 256,
        "num_envs": 4,
        "rollout_len": 32,
        "bptt": 8,
        "epochs": 1,
        "minibatches": 2,
    }
    return PPOConfig(**{**base, **kw})


def test_learns_k_step_recall_above_chance():
    """Naming the symbol from 2 steps ago: a memoryless policy scores 0 in expectation, a perfect one 1."""
    cfg = PPOConfig(
        **REPEAT,
        stack="lstm",
        d_hidden=32,
        frames=12_288,
        num_envs=16,
        rollout_len=32,
        epochs=4,
        minibatches=4,
        lr=1e-3,
        seed=0,
    )
    trainer = PPOTrainer(cfg)
    summary = trainer.train(progress=False)
    assert summary["mmer"] > 0.5, summary
    assert summary["final_mean_return"] > 0.4, summary
    result = trainer.evaluate(64)
    assert result["mean_return"] > 0.5, result


@pytest.mark.parametrize("stack", ["lstm_plain", "gru", "conv_lstm"])
def test_training_replay_matches_rollout_log_probs(stack):
    """Before any update the PPO ratio is exactly 1: sequence-mode replay of bptt windows == rollout."""
    trainer = PPOTrainer(_tiny(stack=stack, env_kwargs={"k": 2, "n": 3, "length": 7}))
    batch, starts, returns, _ = trainer.collect()
    assert len(returns) > 0 and batch["is_init"][:, 1:].any(), "rollout must cross episode boundaries"
    seqs, starts = batch.reshape(-1, 8), starts.reshape(-1)
    with torch.no_grad():
        dist, values, _ = trainer.policy(seqs["observation"], starts, seqs["is_init"])
        out = trainer.minibatch_loss(seqs, starts)
    torch.testing.assert_close(dist.log_prob(seqs["action"]), seqs["log_prob"], atol=1e-5, rtol=0)
    torch.testing.assert_close(values, seqs["value"], atol=1e-5, rtol=0)
    assert abs(float(out["kl_approx"])) < 1e-6 and float(out["clip_fraction"]) == 0.0


def test_checkpoint_resume_and_outputs(tmp_path):
    trainer = PPOTrainer(_tiny(frames=256), tmp_path)
    trainer.train(progress=False)
    assert trainer.updates == 2
    for name in (
        "metrics.json",
        "returns.png",
        "checkpoint/model.safetensors",
        "checkpoint/optim.safetensors",
        "checkpoint/trainer.json",
    ):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["summary"]["frames"] == 256

    resumed = PPOTrainer.load(tmp_path / "checkpoint", tmp_path, overrides={"frames": 384})
    assert resumed.frames == 256 and resumed.updates == 2 and len(resumed.history) == 2
    for (k, a), (_, b) in zip(trainer.policy.state_dict().items(), resumed.policy.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    sa, sb = trainer.optim.state_dict()["state"], resumed.optim.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k])
    resumed.train(progress=False)
    assert resumed.updates == 3 and resumed.frames == 384
    saved = load_file(str(tmp_path / "checkpoint" / "model.safetensors"))
    assert saved.keys() == dict(resumed.policy.state_dict()).keys()


def test_continuous_actions_and_bf16_state():
    trainer = PPOTrainer(
        PPOConfig(
            env="Pendulum-v1",
            stack="conv_lstm",
            d_hidden=8,
            frames=64,
            num_envs=2,
            rollout_len=32,
            bptt=16,
            epochs=1,
            minibatches=2,
            store_dtype="bf16",
        )
    )
    trainer.train(progress=False)
    rec = trainer.history[-1]
    assert all(torch.isfinite(torch.tensor(rec[k])) for k in ("loss_objective", "loss_critic", "grad_norm"))


def test_popgym_env_gets_previous_action_and_first_flag():
    pytest.importorskip("popgym")
    trainer = PPOTrainer(
        PPOConfig(
            env="RepeatPreviousEasy",
            d_hidden=8,
            frames=64,
            num_envs=2,
            rollout_len=32,
            epochs=1,
            minibatches=1,
        )
    )
    assert trainer.popgym
    assert trainer.envs.single_observation_space.shape == (4 + 4 + 1,)
    summary = trainer.train(progress=False)
    assert summary["popgym"] and summary["frames"] == 64


def test_a_seed_fixes_the_run_on_popgym():
    """Same seed, same run: the stack's init and POPGym's decks (shuffled with numpy's global RNG) are seeded."""
    pytest.importorskip("popgym")
    import numpy as np

    def run(seed: int, stack: str, global_state: int) -> tuple[list[float], torch.Tensor]:
        np.random.seed(global_state)  # whatever numpy's and torch's global RNGs held before must not matter
        torch.manual_seed(global_state)
        cfg = PPOConfig(env="RepeatPreviousEasy", stack=stack, d_hidden=8, frames=256, num_envs=4, rollout_len=32,
                        epochs=1, minibatches=1, seed=seed)
        trainer = PPOTrainer(cfg)
        init = torch.cat([p.detach().flatten() for p in trainer.policy.parameters()])
        trainer.train(progress=False)
        return [h["mean_return"] for h in trainer.history] + [h["loss_objective"] for h in trainer.history], init

    for stack in ("gru", "D"):
        curve, init = run(0, stack, global_state=1)
        again, init_again = run(0, stack, global_state=2)
        assert curve == again and torch.equal(init, init_again), stack
    gru_curve, gru_init = run(0, "gru", global_state=1)
    other_curve, other_init = run(1, "gru", global_state=1)
    assert not torch.equal(gru_init, other_init) and gru_curve != other_curve


def test_config_validation():
    with pytest.raises(ValueError, match="bptt must divide"):
        _tiny(rollout_len=30, bptt=8)
    with pytest.raises(ValueError, match="minibatches"):
        _tiny(num_envs=1, rollout_len=8, bptt=8, minibatches=2)
    with pytest.raises(ValueError, match="unknown stack"):
        PPOTrainer(_tiny(stack="no-such-stack"))
    with pytest.raises(TypeError, match="action space"):
        RecurrentPolicy(3, gym.spaces.MultiDiscrete([[2, 2], [2, 2]]), resolve_stack("lstm_plain", 8))
    with pytest.raises(ValueError, match="no CUDA device|device must be"):
        PPOTrainer(_tiny(device="cuda:7" if not torch.cuda.is_available() else "cuda:99"))
    with pytest.raises(ValueError, match="amp"):
        PPOTrainer(_tiny(device="cpu", amp=True))


def test_cli_train_resume_eval(tmp_path):
    runner = CliRunner()
    common = [
        "rl",
        "train",
        "--env",
        "cortexmem/RepeatK-v0",
        "--stack",
        "conv",
        "--num-envs",
        "2",
        "--rollout-len",
        "16",
        "--d-hidden",
        "8",
        "--minibatches",
        "1",
        "--epochs",
        "1",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    res = runner.invoke(app, [*common, "--frames", "32"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{") :])["frames"] == 32
    res = runner.invoke(app, [*common, "--frames", "64", "--resume"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{") :])["updates"] == 2
    res = runner.invoke(
        app,
        [
            "rl",
            "eval",
            "--checkpoint",
            str(tmp_path / "checkpoint"),
            "--episodes",
            "3",
            "--out",
            str(tmp_path / "eval.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "eval.json").read_text())["episodes"] == 3
    res = runner.invoke(app, ["rl", "train", "--env", "cortexmem/RepeatK-v0", "--out", str(tmp_path / "x"), "--resume"])
    assert res.exit_code != 0 and "no checkpoint" in res.output


@pytest.mark.parametrize("stack", ["AXMS", "lstm", "gated_delta"])
def test_rollout_through_the_step_runner_matches_the_eager_policy(stack):
    """The CUDA-graph rollout path (here its eager form on CPU: the same static buffers and in-place state) gives
    the same rollout as the policy's own step, across two rollouts (state carried) and episode resets."""
    batches = []
    for use_runner in (False, True):
        torch.manual_seed(0)
        trainer = PPOTrainer(_tiny(stack=stack, d_hidden=32, rollout_len=24, bptt=8, step_graph="off"))
        if use_runner:
            assert trainer._step_runner(use_graph=False) is not None
        out = [trainer.collect() for _ in range(2)]
        assert isinstance(trainer._state, type(trainer.policy.initial_state(1)))
        batches.append((out, trainer._state))
    (eager, s_eager), (runner, s_runner) = batches
    for (b0, st0, r0, _), (b1, st1, r1, _) in zip(eager, runner, strict=True):
        assert b0["done"].any()  # an episode ended inside the rollout: resets went through both paths
        for key in ("action", "log_prob", "value", "advantage", "truncation_value"):
            torch.testing.assert_close(b1[key], b0[key], rtol=1e-5, atol=1e-5, msg=key)
        for k in st0.keys(include_nested=True, leaves_only=True):
            torch.testing.assert_close(st1[k], st0[k], rtol=1e-5, atol=1e-5)
        assert r1 == pytest.approx(r0)
    for k in s_eager.keys(include_nested=True, leaves_only=True):
        torch.testing.assert_close(s_runner[k], s_eager[k], rtol=1e-5, atol=1e-5)


def test_step_graph_on_needs_cuda():
    with pytest.raises(ValueError, match="step_graph='on'.*CUDA"):
        PPOTrainer(_tiny(step_graph="on"))

