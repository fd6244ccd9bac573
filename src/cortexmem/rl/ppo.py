"""Recurrent PPO over vectorised Gymnasium envs: policy, value and memory on one device, envs on CPU.

Rollouts run the memory step by step and keep the state at each ``bptt`` window start; PPO epochs replay the
windows in sequence mode from those states (resets inside a window are the cells' own masks), with one trunk
pass feeding the actor and the critic.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from torch import nn

from ..runtime.step_runner import StepRunner
from ..stacks import CortexStackConfig, build_cortex
from ..utils.io import CheckpointError, atomic_write_json, json_safe, one_line, validation_message
from .checkpoint import (
    check_compatible,
    load_weights,
    read_checkpoint_meta,
    read_tensors,
    restore_optimizer,
    save_checkpoint,
)
from .config import PPOConfig, resolve_device
from .envs import check_env, is_popgym, make_vector_env
from .gae import gae
from .loss import ppo_loss
from .module import resolve_store_dtype
from .plots import plot_returns
from .policy import RecurrentPolicy, mode
from .stacks import resolve_stack

log = logging.getLogger(__name__)

__all__ = ["PPOConfig", "PPOTrainer", "RecurrentPolicy", "read_checkpoint_meta", "resolve_device", "plot_returns"]


class PPOTrainer:
    """Collect ``num_envs x rollout_len`` steps in step mode, then PPO epochs over ``bptt``-long sequences."""

    def __init__(
        self, cfg: PPOConfig, out_dir: str | Path | None = None, *, stack_cfg: CortexStackConfig | None = None
    ) -> None:
        """``stack_cfg`` (used when resuming) replaces resolving ``cfg.stack`` by name."""
        self.cfg = cfg
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = resolve_device(cfg.device)
        if cfg.amp and self.device.type != "cuda":
            raise ValueError(f"amp (bf16 autocast) needs a CUDA device; this run is on {self.device}")
        if cfg.step_graph == "on" and self.device.type != "cuda":
            raise ValueError(f"step_graph='on' (CUDA-graph rollout steps) needs a CUDA device; this run is on "
                             f"{self.device}")
        obs_dim, action_space = check_env(cfg.env, memory_inputs=cfg.memory_inputs, env_kwargs=cfg.env_kwargs)
        torch.manual_seed(cfg.seed)  # before the stack is built: its init is part of the run
        stack = (
            build_cortex(stack_cfg) if stack_cfg is not None else resolve_stack(cfg.stack, cfg.d_hidden, cfg.num_layers)
        )
        self.popgym = is_popgym(cfg.env)
        self.envs = make_vector_env(cfg.env, cfg.num_envs, memory_inputs=cfg.memory_inputs, env_kwargs=cfg.env_kwargs)
        self.action_space = action_space
        self.obs_dim = obs_dim
        self.stack_cfg = stack.config
        self.store_dtype = resolve_store_dtype(cfg.store_dtype)
        self.policy = RecurrentPolicy(obs_dim, action_space, stack, store_dtype=cfg.store_dtype, amp=cfg.amp)
        self.policy.to(self.device)
        self.optim = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr, eps=1e-5)
        self.frames = 0
        self.updates = 0
        self.history: list[dict[str, Any]] = []
        self._runner: StepRunner | None = None  # built at the first rollout (see _step_runner)
        self._start_envs(cfg.seed)

    @property
    def bptt(self) -> int:
        return self.cfg.bptt or self.cfg.rollout_len

    # --- rollout ------------------------------------------------------------------------------
    def _start_envs(self, seed: int) -> None:
        # POPGym's card decks shuffle with numpy's global RNG, not the env's own: seed it too, or a seed would not
        # fix the episodes
        np.random.seed(seed % 2**32)
        obs, _ = self.envs.reset(seed=seed)
        n = self.cfg.num_envs
        self._obs = self._tensor(obs)
        self._is_init = torch.ones(n, dtype=torch.bool, device=self.device)
        self._state = self.policy.initial_state(n, device=self.device)
        self._ep_return = np.zeros(n)
        self._ep_len = np.zeros(n, np.int64)

    def _tensor(self, obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs, np.float32)).to(self.device, non_blocking=True)

    def _stored(self, state: TensorDict) -> TensorDict:
        return state.apply(lambda v: v.to(self.store_dtype).clone() if v.is_floating_point() else v.clone())

    def _step_envs(self, action: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, reward, term, trunc, info = self.envs.step(self.policy.to_env(action))
        done = np.logical_or(term, trunc)
        self._ep_return += reward
        self._ep_len += 1
        return obs, np.asarray(reward, np.float32), np.asarray(term, bool), done, info

    @torch.no_grad()
    def _truncation_values(self, trunc: np.ndarray, info: dict, state: TensorDict) -> torch.Tensor:
        """Value of each truncated env's final observation, with the memory carried to it (0 elsewhere)."""
        out = torch.zeros(self.cfg.num_envs, device=self.device)
        if trunc.any():
            idx = np.flatnonzero(trunc)
            final = self._tensor(np.stack([info["final_obs"][i] for i in idx]))
            rows = torch.as_tensor(idx, device=self.device)
            features, _ = self.policy.trunk(final, state[rows], None)
            out[rows] = self.policy.value(features)
        return out

    def _step_runner(self, use_graph: bool | None = None) -> StepRunner | None:
        """The rollout's memory step on static buffers, captured in a CUDA graph (``cfg.step_graph``): one replay
        instead of dozens of small kernel launches per layer. ``use_graph=False`` runs the same path eagerly."""
        if self._runner is None:
            graph = self.cfg.step_graph == "on" or (self.cfg.step_graph == "auto" and self.device.type == "cuda")
            if use_graph is None and not graph:
                return None
            self._runner = self.policy.step_runner(self.cfg.num_envs, self.device,
                                                   use_graph=graph if use_graph is None else use_graph)
        return self._runner

    @torch.no_grad()
    def collect(self) -> tuple[TensorDict, TensorDict, list[float], list[int]]:
        """One rollout: ``(batch [N, T], window-start states [N, T // bptt], episode returns, lengths)``.

        ``batch`` holds observation, is_init, action, log_prob, value, reward, terminated, done, next_value,
        advantage and value_target; ``next_value`` is the value of the final observation at a truncation.
        """
        n, steps = self.cfg.num_envs, self.cfg.rollout_len
        cols: dict[str, list[torch.Tensor]] = {}
        starts, returns, lengths = [], [], []
        runner = self._step_runner()
        if runner is not None:
            runner.set_state(self._state)
            self._state = runner.state
        for t in range(steps):
            if t % self.bptt == 0:
                starts.append(self._stored(self._state))
            dist, value, new_state = self.policy(self._obs, self._state, self._is_init, runner)
            action = dist.sample()
            obs, reward, term, done, info = self._step_envs(action)
            trunc = done & ~term
            row = {
                "observation": self._obs, "is_init": self._is_init, "action": action,
                "log_prob": dist.log_prob(action), "value": value,
                "reward": torch.as_tensor(reward).to(self.device), "terminated": torch.as_tensor(term).to(self.device),
                "done": torch.as_tensor(done).to(self.device), "truncated": torch.as_tensor(trunc).to(self.device),
                "truncation_value": self._truncation_values(trunc, info, new_state),
            }
            for k, v in row.items():
                cols.setdefault(k, []).append(v)
            for i in np.flatnonzero(done):
                returns.append(float(self._ep_return[i]))
                lengths.append(int(self._ep_len[i]))
            self._ep_return[done] = 0.0
            self._ep_len[done] = 0
            self._state, self._obs = new_state, self._tensor(obs)
            self._is_init = torch.as_tensor(done).to(self.device)
        if runner is not None:
            self._state = runner.state.clone()  # the runner's buffers are overwritten by the next rollout
        features, _ = self.policy.trunk(self._obs, self._state, self._is_init)
        boot = self.policy.value(features)  # the observation after the last step, memory carried to it
        batch = TensorDict({k: torch.stack(v, dim=1) for k, v in cols.items()}, batch_size=[n, steps])
        next_value = torch.cat([batch["value"][:, 1:], boot[:, None]], dim=1)
        next_value = torch.where(batch["truncated"], batch["truncation_value"], next_value)
        batch.set("next_value", next_value)
        adv, target = gae(
            batch["reward"], batch["value"], next_value, batch["terminated"], batch["done"],
            self.cfg.gamma, self.cfg.lmbda,
        )
        batch.update({"advantage": adv, "value_target": target})
        self.frames += n * steps
        return batch, torch.stack(starts, dim=1), returns, lengths

    # --- update -------------------------------------------------------------------------------
    def minibatch_loss(self, seqs: TensorDict, starts: TensorDict) -> dict[str, torch.Tensor]:
        """PPO loss terms of ``seqs`` ``[B, bptt]`` replayed from ``starts`` ``[B]``: one trunk pass."""
        cfg = self.cfg
        state = starts.apply(lambda v: v.float() if v.is_floating_point() else v)
        dist, value, _ = self.policy(seqs["observation"], state, seqs["is_init"])
        return ppo_loss(
            dist.log_prob(seqs["action"]), seqs["log_prob"], seqs["advantage"], value, seqs["value"],
            seqs["value_target"], dist.entropy(), clip_epsilon=cfg.clip_epsilon, value_clip=cfg.value_clip,
            normalize_advantage=cfg.normalize_advantage, critic_coeff=cfg.critic_coeff,
            entropy_coeff=cfg.entropy_coeff,
        )

    def update(self, batch: TensorDict, starts: TensorDict) -> dict[str, float]:
        """PPO epochs over ``bptt``-long sequences, each starting from its stored rollout state."""
        cfg = self.cfg
        rows = cfg.num_envs * (cfg.rollout_len // self.bptt)
        seqs = batch.reshape(rows, self.bptt)  # (N * W, bptt): row-major keeps each env's windows in order
        starts = starts.reshape(rows)
        stats: dict[str, list[torch.Tensor]] = {}
        for _ in range(cfg.epochs):
            perm = torch.randperm(rows, device=self.device)
            for idx in perm.chunk(cfg.minibatches):
                out = self.minibatch_loss(seqs[idx], starts[idx])
                total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
                self.optim.zero_grad(set_to_none=True)
                total.backward()
                gn = nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optim.step()
                for k, v in out.items():
                    stats.setdefault(k, []).append(v.detach())
                stats.setdefault("grad_norm", []).append(gn.detach())
        self.updates += 1
        return {k: float(torch.stack(v).float().mean()) for k, v in stats.items()}  # one host sync per update

    # --- loop ---------------------------------------------------------------------------------
    @property
    def total_updates(self) -> int:
        return math.ceil(self.cfg.frames / (self.cfg.num_envs * self.cfg.rollout_len))

    def train(self, *, progress: bool = True, checkpoint_every: int = 0, plots: bool = True) -> dict[str, Any]:
        """Run until ``cfg.frames``; writes metrics/checkpoint (and the curve unless ``plots=False``, which needs
        no matplotlib) into ``out_dir`` when given."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = [
            TextColumn("[bold]PPO"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} frames"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        t0 = time.perf_counter() - sum(h.get("update_seconds", 0.0) for h in self.history)
        target = self.total_updates * self.cfg.num_envs * self.cfg.rollout_len
        frames0, run_t0 = self.frames, time.perf_counter()
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task("train", total=target, completed=self.frames, info="")
            while self.frames < target:
                tu = time.perf_counter()
                batch, starts, returns, lengths = self.collect()
                tc = time.perf_counter()
                stats = self.update(batch, starts)
                seconds = time.perf_counter() - tu
                record = {
                    "update": self.updates,
                    "frames": self.frames,
                    "mean_return": float(np.mean(returns)) if returns else None,
                    "episodes": len(returns),
                    "mean_length": float(np.mean(lengths)) if lengths else None,
                    "update_seconds": seconds,
                    "collect_seconds": tc - tu,
                    "frames_per_second": self.cfg.num_envs * self.cfg.rollout_len / seconds,
                    **stats,
                }
                self.history.append(record)
                best = self.summary()["mmer"]
                ret = record["mean_return"] if returns else float("nan")
                bar.update(
                    task,
                    completed=self.frames,
                    info=f"return {ret:+.3f} best {best:+.3f} {record['frames_per_second']:,.0f} frames/s",
                )
                if self.out_dir is not None and checkpoint_every and self.updates % checkpoint_every == 0:
                    self.save(self.out_dir)
        summary = self.summary()
        summary["wall_seconds"] = time.perf_counter() - t0
        run_seconds = time.perf_counter() - run_t0
        summary["frames_per_second"] = (self.frames - frames0) / run_seconds if run_seconds > 0 else None
        if self.out_dir is not None:
            self.save(self.out_dir)
            self.write_metrics(self.out_dir, summary, plots=plots)
        return summary

    def summary(self) -> dict[str, Any]:
        means = [h["mean_return"] for h in self.history if h["mean_return"] is not None]
        last = means[-5:]
        return {
            "env": self.cfg.env,
            "stack": self.cfg.stack,
            "frames": self.frames,
            "updates": self.updates,
            "mmer": max(means) if means else float("nan"),
            "final_mean_return": float(np.mean(last)) if last else float("nan"),
            "popgym": self.popgym,
            "device": str(self.device),
            "amp": self.cfg.amp,
            "num_envs": self.cfg.num_envs,
            "params": sum(p.numel() for p in self.policy.parameters()),
        }

    # --- outputs ------------------------------------------------------------------------------
    def write_metrics(self, out_dir: Path, summary: dict[str, Any], *, plots: bool = True) -> None:
        """``metrics.json`` (summary + per-update records) and ``returns.png``."""
        atomic_write_json(out_dir / "metrics.json", json_safe({"summary": summary, "history": self.history}))
        if plots:
            plot_returns({f"{self.cfg.stack}": self.history}, out_dir / "returns.png", title=self.cfg.env)

    def save(self, out_dir: Path) -> Path:
        """``checkpoint/``: model + optimizer safetensors and a JSON with config, counters and history."""
        return save_checkpoint(self, out_dir)

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        out_dir: str | Path | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> PPOTrainer:
        """Rebuild a trainer from ``checkpoint/`` (weights, optimizer, counters); envs start afresh.

        ``overrides`` may change run settings (frames, device, env for evaluation); a checkpoint that does not
        fit the resulting policy (observation width, action space, stack weights) is refused with one line.
        """
        ckpt = Path(checkpoint)
        meta = read_checkpoint_meta(ckpt)
        try:
            cfg = PPOConfig.model_validate({**meta["config"], **(overrides or {})})
            stack_cfg = CortexStackConfig.model_validate(meta["stack_config"])
        except ValueError as e:
            raise CheckpointError(f"{ckpt / 'trainer.json'}: invalid run or stack config "
                                  f"({validation_message(e)})") from None
        try:
            obs_dim, action_space = check_env(cfg.env, memory_inputs=cfg.memory_inputs, env_kwargs=cfg.env_kwargs)
        except ValueError as e:
            if overrides and "env" in overrides:  # the caller's env, not the file's
                raise
            raise CheckpointError(f"{ckpt / 'trainer.json'}: its environment cannot be made ({one_line(e)})") from None
        check_compatible(meta, ckpt / "trainer.json", env=cfg.env, obs_dim=obs_dim, action_space=str(action_space))
        model = read_tensors(ckpt / "model.safetensors")
        flat = read_tensors(ckpt / "optim.safetensors")
        trainer = cls(cfg, out_dir, stack_cfg=stack_cfg)
        load_weights(trainer.policy, model, ckpt / "model.safetensors", f"the {cfg.stack!r} policy for {cfg.env!r}")
        restore_optimizer(trainer.optim, flat, meta["param_groups"], ckpt / "optim.safetensors")
        try:
            if "rng.torch" in flat:
                torch.set_rng_state(flat["rng.torch"])
            trainer.frames, trainer.updates = int(meta["frames"]), int(meta["updates"])
            trainer.history = list(meta["history"])
            if trainer.frames < 0 or trainer.updates < 0 or cfg.seed + 1_000_003 * trainer.updates < 0:
                raise ValueError(f"frames {trainer.frames}, updates {trainer.updates} and seed {cfg.seed} must "
                                 f"be >= 0")
        except (ValueError, KeyError, TypeError, RuntimeError, OverflowError) as e:
            raise CheckpointError(f"{ckpt / 'trainer.json'}: counters or RNG state do not fit "
                                  f"({one_line(e)[:200]})") from None
        trainer._start_envs(cfg.seed + 1_000_003 * trainer.updates)
        return trainer

    @torch.no_grad()
    def evaluate(self, episodes: int, *, deterministic: bool = True) -> dict[str, Any]:
        """Mean/std return over ``episodes`` finished episodes with the current policy (envs restarted)."""
        self._start_envs(self.cfg.seed + 7919)
        returns: list[float] = []
        while len(returns) < episodes:
            dist, _, self._state = self.policy(self._obs, self._state, self._is_init)
            action = mode(dist) if deterministic else dist.sample()
            obs, _, _, done, _ = self._step_envs(action)
            returns.extend(float(self._ep_return[i]) for i in np.flatnonzero(done))
            self._ep_return[done] = 0.0
            self._ep_len[done] = 0
            self._obs = self._tensor(obs)
            self._is_init = torch.as_tensor(done).to(self.device)
        returns = returns[:episodes]
        return {
            "env": self.cfg.env,
            "stack": self.cfg.stack,
            "episodes": len(returns),
            "mean_return": float(np.mean(returns)),
            "std_return": float(np.std(returns)),
            "deterministic": deterministic,
        }
