"""Recurrent PPO over vectorised Gymnasium envs: CortexModule trunk, TorchRL's ClipPPOLoss and GAE."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torch.distributions import Categorical
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import ProbabilisticActor, TanhNormal
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from ..core.io import (
    CheckpointError,
    CheckpointNotFoundError,
    atomic_save_safetensors,
    atomic_write_json,
    check_optimizer_state,
    load_safetensors_checked,
    load_state_checked,
    one_line,
    read_versioned,
    validate_config,
)
from ..stacks import CortexStack, CortexStackConfig, build_cortex
from .envs import is_popgym, make_vector_env
from .module import CortexModule
from .stacks import resolve_stack

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cortexmem.rl.ppo"
CHECKPOINT_VERSION = 1


class PPOConfig(BaseModel):
    """Everything a run needs; saved with each checkpoint."""

    model_config = ConfigDict(extra="forbid")

    env: str
    stack: str = "lstm"
    d_hidden: int = Field(default=64, ge=1)
    num_layers: int = Field(default=1, ge=1)
    frames: int = Field(default=100_000, ge=1)
    num_envs: int = Field(default=16, ge=1)
    rollout_len: int = Field(default=64, ge=1)
    bptt: int | None = Field(default=None, ge=1)
    epochs: int = Field(default=4, ge=1)
    minibatches: int = Field(default=4, ge=1)
    lr: float = Field(default=3e-4, gt=0)
    gamma: float = Field(default=0.99, gt=0, le=1)
    lmbda: float = Field(default=0.95, ge=0, le=1)
    clip_epsilon: float = Field(default=0.2, gt=0)
    entropy_coeff: float = Field(default=0.01, ge=0)
    critic_coeff: float = Field(default=0.5, ge=0)
    max_grad_norm: float = Field(default=0.5, gt=0)
    seed: int = 0
    memory_inputs: bool | None = None
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    store_dtype: str = Field(default="fp32", pattern="^(fp32|bf16)$")

    @model_validator(mode="after")
    def _check(self) -> PPOConfig:
        bptt = self.bptt or self.rollout_len
        if self.rollout_len % bptt:
            raise ValueError(f"bptt must divide rollout_len, got bptt={bptt} and rollout_len={self.rollout_len}")
        rows = self.num_envs * (self.rollout_len // bptt)
        if self.minibatches > rows:
            raise ValueError(f"minibatches ({self.minibatches}) exceeds the number of sequences per update ({rows})")
        return self


class RecurrentPolicy(nn.Module):
    """``obs -> Linear+SiLU -> CortexModule -> (actor head, value head)``; one trunk for both heads."""

    def __init__(
        self,
        obs_dim: int,
        action_space: spaces.Space,
        stack: CortexStack,
        *,
        store_dtype: str = "fp32",
    ) -> None:
        super().__init__()
        if not isinstance(stack, CortexStack):
            raise TypeError(f"RecurrentPolicy expects a built CortexStack, got {type(stack).__name__}")
        d = stack.d_hidden
        self.encoder = nn.Sequential(nn.Linear(obs_dim, d), nn.SiLU())
        self.core = CortexModule(stack, "embed", "features", store_dtype=store_dtype)
        self.value_head = nn.Linear(d, 1)
        enc = TensorDictModule(self.encoder, in_keys=["observation"], out_keys=["embed"])
        if isinstance(action_space, spaces.Discrete):
            self.action_head = nn.Linear(d, int(action_space.n))
            head = TensorDictModule(self.action_head, in_keys=["features"], out_keys=["logits"])
            actor = ProbabilisticActor(
                TensorDictSequential(enc, self.core, head),
                in_keys=["logits"],
                distribution_class=Categorical,
                return_log_prob=True,
                default_interaction_type=ExplorationType.RANDOM,
            )
        elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
            act = action_space.shape[0]
            self.action_head = nn.Linear(d, act)
            self.log_std = nn.Parameter(torch.full((act,), -0.5))
            head = TensorDictModule(
                _GaussianHead(self.action_head, self.log_std), in_keys=["features"], out_keys=["loc", "scale"]
            )
            low = torch.as_tensor(np.clip(action_space.low, -1e6, 1e6), dtype=torch.float32)
            high = torch.as_tensor(np.clip(action_space.high, -1e6, 1e6), dtype=torch.float32)
            actor = ProbabilisticActor(
                TensorDictSequential(enc, self.core, head),
                in_keys=["loc", "scale"],
                distribution_class=TanhNormal,
                distribution_kwargs={"low": low, "high": high},
                return_log_prob=True,
                default_interaction_type=ExplorationType.RANDOM,
            )
        else:
            raise TypeError(f"unsupported action space {action_space!r}: expected Discrete or a 1-D Box")
        critic = TensorDictSequential(
            enc, self.core, TensorDictModule(self.value_head, in_keys=["features"], out_keys=["state_value"])
        )
        # actor and critic are views over the modules above; kept unregistered so each weight has one name
        object.__setattr__(self, "actor", actor)
        object.__setattr__(self, "critic", critic)

    def value_from_features(self, td: TensorDict) -> torch.Tensor:
        return self.value_head(td["features"])


class _GaussianHead(nn.Module):
    def __init__(self, linear: nn.Linear, log_std: nn.Parameter) -> None:
        super().__init__()
        self.linear, self.log_std = linear, log_std

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.linear(h)
        return loc, self.log_std.clamp(-5, 2).exp().expand_as(loc)


def _action_to_env(action: torch.Tensor, space: spaces.Space) -> np.ndarray:
    a = action.detach().cpu().numpy()
    return a.astype(np.int64) if isinstance(space, spaces.Discrete) else a.astype(np.float32)


class PPOTrainer:
    """Collect ``num_envs x rollout_len`` steps in step mode, then PPO epochs over ``bptt``-long sequences."""

    def __init__(
        self, cfg: PPOConfig, out_dir: str | Path | None = None, *, stack_cfg: CortexStackConfig | None = None
    ) -> None:
        """``stack_cfg`` (used when resuming) replaces resolving ``cfg.stack`` by name."""
        self.cfg = cfg
        self.out_dir = Path(out_dir) if out_dir is not None else None
        torch.manual_seed(cfg.seed)
        self.popgym = is_popgym(cfg.env)
        self.envs = make_vector_env(cfg.env, cfg.num_envs, memory_inputs=cfg.memory_inputs, env_kwargs=cfg.env_kwargs)
        self.action_space = self.envs.single_action_space
        obs_dim = int(self.envs.single_observation_space.shape[0])
        stack = (
            build_cortex(stack_cfg) if stack_cfg is not None else resolve_stack(cfg.stack, cfg.d_hidden, cfg.num_layers)
        )
        self.stack_cfg = stack.config
        self.policy = RecurrentPolicy(obs_dim, self.action_space, stack, store_dtype=cfg.store_dtype)
        self.loss = ClipPPOLoss(
            self.policy.actor,
            self.policy.critic,
            clip_epsilon=cfg.clip_epsilon,
            entropy_coeff=cfg.entropy_coeff,
            critic_coeff=cfg.critic_coeff,
            normalize_advantage=True,
            loss_critic_type="l2",
            functional=False,
        )
        self.gae = GAE(gamma=cfg.gamma, lmbda=cfg.lmbda, value_network=None)
        self.optim = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr, eps=1e-5)
        self.frames = 0
        self.updates = 0
        self.history: list[dict[str, Any]] = []
        self._start_envs(cfg.seed)

    # --- rollout ------------------------------------------------------------------------------
    def _start_envs(self, seed: int) -> None:
        obs, _ = self.envs.reset(seed=seed)
        n = self.cfg.num_envs
        self._obs = torch.as_tensor(obs, dtype=torch.float32)
        self._is_init = torch.ones(n, 1, dtype=torch.bool)
        self._state = self.policy.core.stored_initial_state([n])
        self._ep_return = np.zeros(n)
        self._ep_len = np.zeros(n, np.int64)

    @torch.no_grad()
    def collect(self) -> tuple[TensorDict, list[float], list[int]]:
        """One rollout ``[num_envs, rollout_len]`` with values, log-probs, advantages; episode stats."""
        n, steps = self.cfg.num_envs, self.cfg.rollout_len
        rows, returns, lengths = [], [], []
        with set_exploration_type(ExplorationType.RANDOM):
            for _ in range(steps):
                td = TensorDict({"observation": self._obs, "is_init": self._is_init}, batch_size=[n])
                td.update(self._state)
                self.policy.actor(td)
                td.set("state_value", self.policy.value_from_features(td))
                obs, reward, term, trunc, _ = self.envs.step(_action_to_env(td["action"], self.action_space))
                done = np.logical_or(term, trunc)
                # truncation is treated as termination (no bootstrap through the auto-reset observation)
                td.set(("next", "reward"), torch.as_tensor(reward, dtype=torch.float32).unsqueeze(-1))
                td.set(("next", "done"), torch.as_tensor(done).unsqueeze(-1))
                td.set(("next", "terminated"), torch.as_tensor(done).unsqueeze(-1))
                self._ep_return += reward
                self._ep_len += 1
                for i in np.flatnonzero(done):
                    returns.append(float(self._ep_return[i]))
                    lengths.append(int(self._ep_len[i]))
                self._ep_return[done] = 0.0
                self._ep_len[done] = 0
                self._state = td.get("next").select(self.policy.core.state_prefix).clone()
                self._obs = torch.as_tensor(obs, dtype=torch.float32)
                self._is_init = torch.as_tensor(done).unsqueeze(-1)
                rows.append(
                    td.exclude("next", "embed", "features", "logits", "loc", "scale").update(
                        {"next": td.get("next").exclude(self.policy.core.state_prefix)}
                    )
                )
            # value of the observation after the last step, with the state carried to it
            boot = TensorDict({"observation": self._obs, "is_init": self._is_init}, batch_size=[n])
            boot.update(self._state)
            self.policy.critic(boot)
        batch = torch.stack(rows, dim=1)
        values = batch["state_value"]
        batch.set(("next", "state_value"), torch.cat([values[:, 1:], boot["state_value"].unsqueeze(1)], dim=1))
        self.gae(batch)
        self.frames += n * steps
        return batch, returns, lengths

    # --- update -------------------------------------------------------------------------------
    def update(self, batch: TensorDict) -> dict[str, float]:
        """PPO epochs over ``bptt``-long sequences (each starting from its stored rollout state)."""
        cfg = self.cfg
        bptt = cfg.bptt or cfg.rollout_len
        seqs = batch.reshape(cfg.num_envs * (cfg.rollout_len // bptt), bptt)
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.epochs):
            perm = torch.randperm(seqs.shape[0])
            for idx in perm.chunk(cfg.minibatches):
                out = self.loss(seqs[idx].clone())
                total = out["loss_objective"] + out["loss_critic"] + out.get("loss_entropy", 0.0)
                self.optim.zero_grad(set_to_none=True)
                total.backward()
                gn = nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optim.step()
                for k in ("loss_objective", "loss_critic", "loss_entropy", "entropy", "kl_approx"):
                    if k in out.keys():
                        stats.setdefault(k, []).append(float(out[k].detach()))
                stats.setdefault("grad_norm", []).append(float(gn))
        self.updates += 1
        return {k: float(np.mean(v)) for k, v in stats.items()}

    # --- loop ---------------------------------------------------------------------------------
    @property
    def total_updates(self) -> int:
        return math.ceil(self.cfg.frames / (self.cfg.num_envs * self.cfg.rollout_len))

    def train(self, *, progress: bool = True, checkpoint_every: int = 0) -> dict[str, Any]:
        """Run until ``cfg.frames``; writes metrics/curve/checkpoint into ``out_dir`` when given."""
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from ..core.progress import make_progress

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
        with make_progress(*columns, disable=not progress) as bar:
            task = bar.add_task("train", total=target, completed=self.frames, info="")
            while self.frames < target:
                tu = time.perf_counter()
                batch, returns, lengths = self.collect()
                stats = self.update(batch)
                record = {
                    "update": self.updates,
                    "frames": self.frames,
                    "mean_return": float(np.mean(returns)) if returns else None,
                    "episodes": len(returns),
                    "mean_length": float(np.mean(lengths)) if lengths else None,
                    "update_seconds": time.perf_counter() - tu,
                    **stats,
                }
                self.history.append(record)
                best = self.summary()["mmer"]
                bar.update(
                    task,
                    completed=self.frames,
                    info=f"return {record['mean_return'] if returns else float('nan'):+.3f} best {best:+.3f}",
                )
                if self.out_dir is not None and checkpoint_every and self.updates % checkpoint_every == 0:
                    self.save(self.out_dir)
        summary = self.summary()
        summary["wall_seconds"] = time.perf_counter() - t0
        if self.out_dir is not None:
            self.save(self.out_dir)
            self.write_metrics(self.out_dir, summary)
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
        }

    # --- outputs ------------------------------------------------------------------------------
    def write_metrics(self, out_dir: Path, summary: dict[str, Any]) -> None:
        """``metrics.json`` (summary + per-update records) and ``returns.png``."""
        atomic_write_json(out_dir / "metrics.json", _json_safe({"summary": summary, "history": self.history}))
        plot_returns({f"{self.cfg.stack}": self.history}, out_dir / "returns.png", title=self.cfg.env)

    def save(self, out_dir: Path) -> Path:
        """``checkpoint/``: model + optimizer safetensors and a JSON with config, counters and history."""
        ckpt = Path(out_dir) / "checkpoint"
        atomic_save_safetensors(
            ckpt / "model.safetensors", self.policy.state_dict(), metadata={"format": CHECKPOINT_FORMAT}
        )
        opt = self.optim.state_dict()
        tensors = {f"state.{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()}
        tensors["rng.torch"] = torch.get_rng_state()
        atomic_save_safetensors(ckpt / "optim.safetensors", tensors, metadata={"format": CHECKPOINT_FORMAT})
        atomic_write_json(
            ckpt / "trainer.json",
            _json_safe(
                {
                    "format": CHECKPOINT_FORMAT,
                    "version": CHECKPOINT_VERSION,
                    "config": self.cfg.model_dump(mode="json"),
                    "stack_config": self.stack_cfg.model_dump(mode="json"),
                    "frames": self.frames,
                    "updates": self.updates,
                    "param_groups": opt["param_groups"],
                    "history": self.history,
                }
            ),
        )
        return ckpt

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        out_dir: str | Path | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> PPOTrainer:
        """Rebuild a trainer from ``checkpoint/`` (weights, optimizer, counters); envs start afresh."""
        meta = read_checkpoint_meta(checkpoint)
        ckpt = Path(checkpoint)
        meta_path = ckpt / "trainer.json"
        cfg = validate_config(PPOConfig, {**meta["config"], **(overrides or {})}, meta_path, "PPO config")
        stack_cfg = validate_config(CortexStackConfig, meta["stack_config"], meta_path, "stack config")
        trainer = cls(cfg, out_dir, stack_cfg=stack_cfg)
        model_path = ckpt / "model.safetensors"
        load_state_checked(trainer.policy, load_safetensors_checked(model_path, what="PPO weights file"), model_path,
                           "PPO weights file")
        optim_path = ckpt / "optim.safetensors"
        flat = load_safetensors_checked(optim_path, what="PPO optimizer file")
        state: dict[int, dict[str, torch.Tensor]] = {}
        try:
            for name, v in flat.items():
                if name.startswith("state."):
                    _, i, k = name.split(".", 2)
                    state.setdefault(int(i), {})[k] = v
            opt_state = {"state": state, "param_groups": meta["param_groups"]}
            check_optimizer_state(trainer.optim, opt_state)
            trainer.optim.load_state_dict(opt_state)
            if "rng.torch" in flat:
                torch.set_rng_state(flat["rng.torch"])
            trainer.frames, trainer.updates = int(meta["frames"]), int(meta["updates"])
            if trainer.frames < 0 or trainer.updates < 0 or cfg.seed + 1_000_003 * trainer.updates < 0:
                raise ValueError(f"frames {trainer.frames}, updates {trainer.updates} and seed {cfg.seed} must "
                                 f"be >= 0")
            trainer.history = list(meta["history"])
        except (KeyError, IndexError, ValueError, TypeError, RuntimeError, AttributeError, OverflowError) as e:
            raise CheckpointError(f"PPO checkpoint {ckpt}: optimizer or trainer state does not fit "
                                  f"({one_line(e)[:200]})") from None
        trainer._start_envs(cfg.seed + 1_000_003 * trainer.updates)
        return trainer

    @torch.no_grad()
    def evaluate(self, episodes: int, *, deterministic: bool = True) -> dict[str, Any]:
        """Mean/std return over ``episodes`` finished episodes with the current policy (envs restarted)."""
        self._start_envs(self.cfg.seed + 7919)
        returns: list[float] = []
        mode = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
        n = self.cfg.num_envs
        with set_exploration_type(mode):
            while len(returns) < episodes:
                td = TensorDict({"observation": self._obs, "is_init": self._is_init}, batch_size=[n])
                td.update(self._state)
                self.policy.actor(td)
                obs, reward, term, trunc, _ = self.envs.step(_action_to_env(td["action"], self.action_space))
                done = np.logical_or(term, trunc)
                self._ep_return += reward
                returns.extend(float(self._ep_return[i]) for i in np.flatnonzero(done))
                self._ep_return[done] = 0.0
                self._state = td.get("next").select(self.policy.core.state_prefix).clone()
                self._obs = torch.as_tensor(obs, dtype=torch.float32)
                self._is_init = torch.as_tensor(done).unsqueeze(-1)
        returns = returns[:episodes]
        return {
            "env": self.cfg.env,
            "stack": self.cfg.stack,
            "episodes": len(returns),
            "mean_return": float(np.mean(returns)),
            "std_return": float(np.std(returns)),
            "deterministic": deterministic,
        }


def read_checkpoint_meta(checkpoint: str | Path) -> dict[str, Any]:
    """Validated ``trainer.json`` of a checkpoint directory."""
    ckpt = Path(checkpoint)
    if not ckpt.is_dir():
        raise CheckpointNotFoundError(f"PPO checkpoint folder {ckpt} not found")
    meta = read_versioned(ckpt / "trainer.json", format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION,
                          what="cortexmem PPO checkpoint file",
                          required=("config", "stack_config", "frames", "updates", "param_groups", "history"))
    for key in ("config", "stack_config"):
        if not isinstance(meta[key], dict):
            raise CheckpointError(f"PPO checkpoint file {ckpt / 'trainer.json'}: {key!r} must be a JSON object")
    return meta


def plot_returns(curves: dict[str, list[dict[str, Any]]], path: Path, *, title: str = "") -> None:
    """Mean episodic return against frames, one line per run (needs matplotlib)."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.io import atomic_save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, hist in curves.items():
        pts = [(h["frames"], h["mean_return"]) for h in hist if h.get("mean_return") is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=label)
    ax.set_xlabel("frames")
    ax.set_ylabel("mean episodic return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    atomic_save_figure(fig, path, bbox_inches="tight")
    plt.close(fig)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj
