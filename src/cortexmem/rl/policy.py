"""Recurrent actor-critic: ``obs -> Linear+SiLU -> stack -> (action head, value head)``, one trunk pass for both.

Sharing the trunk: PPO's actor and critic read the same features, so a training step runs the memory once per
minibatch (not once per head) and both losses shape one representation.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from tensordict import TensorDict
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from ..runtime.step_runner import StepRunner
from ..stacks import CortexStack
from .module import CortexModule


class MultiCategorical(Distribution):
    """Independent categoricals over the parts of a ``MultiDiscrete`` action; ``logits`` ``[*, sum(nvec)]``."""

    arg_constraints: dict = {}

    def __init__(self, logits: Tensor, nvec: list[int]) -> None:
        self.parts = [Categorical(logits=lg) for lg in logits.split(nvec, dim=-1)]
        super().__init__(batch_shape=logits.shape[:-1], validate_args=False)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return torch.stack([p.sample(sample_shape) for p in self.parts], dim=-1)

    def log_prob(self, value: Tensor) -> Tensor:
        return sum(p.log_prob(v) for p, v in zip(self.parts, value.unbind(-1), strict=True))

    def entropy(self) -> Tensor:
        return sum(p.entropy() for p in self.parts)

    @property
    def mode(self) -> Tensor:
        return torch.stack([p.probs.argmax(-1) for p in self.parts], dim=-1)


def action_width(space: spaces.Space) -> int:
    """Outputs of the action head for ``space`` (logits or Gaussian means)."""
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete) and np.asarray(space.nvec).ndim == 1:
        return int(np.asarray(space.nvec).sum())
    if isinstance(space, spaces.Box) and len(space.shape) == 1:
        return int(space.shape[0])
    raise TypeError(f"unsupported action space {space}: expected Discrete, a 1-D MultiDiscrete or a 1-D Box")


class RecurrentPolicy(nn.Module):
    """Actor-critic over a :class:`CortexStack`; ``amp`` runs encoder and memory under bf16 autocast on CUDA.

    Heads, log-probs and values stay in fp32 (features are cast up), so the PPO ratio and the value loss are not
    computed in bf16.
    """

    def __init__(
        self, obs_dim: int, action_space: spaces.Space, stack: CortexStack, *, store_dtype: str = "fp32",
        amp: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(stack, CortexStack):
            raise TypeError(f"RecurrentPolicy expects a built CortexStack, got {type(stack).__name__}")
        d = stack.d_hidden
        self.action_space = action_space
        self.amp = bool(amp)
        self.encoder = nn.Sequential(nn.Linear(obs_dim, d), nn.SiLU())
        self.core = CortexModule(stack, "embed", "features", store_dtype=store_dtype)
        self.action_head = nn.Linear(d, action_width(action_space))
        self.value_head = nn.Linear(d, 1)
        if isinstance(action_space, spaces.Box):
            self.log_std = nn.Parameter(torch.full((action_space.shape[0],), -0.5))
            self.register_buffer("act_low", torch.as_tensor(np.clip(action_space.low, -1e6, 1e6), dtype=torch.float32))
            self.register_buffer(
                "act_high", torch.as_tensor(np.clip(action_space.high, -1e6, 1e6), dtype=torch.float32)
            )

    @property
    def stack(self) -> CortexStack:
        return self.core.stack

    def initial_state(self, batch: int, device: Any = None) -> TensorDict:
        """A fresh memory state for ``batch`` rows (fp32)."""
        return self.core.initial_state(batch, device=device)

    def _autocast(self, device: torch.device):
        if self.amp and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step_runner(self, batch: int, device: Any, *, use_graph: bool) -> StepRunner:
        """The memory's step on static buffers for ``batch`` rows (captured in a CUDA graph with ``use_graph``,
        under the policy's autocast), for :meth:`forward`'s ``runner``."""
        with torch.no_grad(), self._autocast(torch.device(device)):
            return StepRunner(self.stack, batch, device, use_graph=use_graph)

    def trunk(self, obs: Tensor, state: TensorDict, resets: Tensor | None,
              runner: StepRunner | None = None) -> tuple[Tensor, TensorDict]:
        """obs ``[N, F]`` (step) or ``[N, T, F]`` (sequence) -> (features fp32 ``[N(, T), d]``, new state).

        With a ``runner`` (step mode only) the memory steps on the runner's buffers: ``state`` must be
        ``runner.state``, which is updated in place and returned."""
        with self._autocast(obs.device):
            if runner is None:
                y, new = self.stack(self.encoder(obs), state, resets=resets)
            else:
                y, new = runner.step(self.encoder(obs), resets), runner.state
        if self.amp and runner is None:  # the runner's buffers are fp32 already
            new = new.apply(lambda v: v.float() if v.is_floating_point() else v)
        return y.float(), new

    def distribution(self, features: Tensor) -> Distribution:
        out = self.action_head(features)
        space = self.action_space
        if isinstance(space, spaces.Discrete):
            return Categorical(logits=out)
        if isinstance(space, spaces.MultiDiscrete):
            return MultiCategorical(out, [int(n) for n in np.asarray(space.nvec)])
        return Independent(Normal(out, self.log_std.clamp(-5, 2).exp().expand_as(out)), 1)

    def value(self, features: Tensor) -> Tensor:
        """``[*, d]`` -> ``[*]``."""
        return self.value_head(features).squeeze(-1)

    def forward(
        self, obs: Tensor, state: TensorDict, resets: Tensor | None = None, runner: StepRunner | None = None
    ) -> tuple[Distribution, Tensor, TensorDict]:
        """One trunk pass -> (action distribution, value, new state)."""
        features, new = self.trunk(obs, state, resets, runner)
        return self.distribution(features), self.value(features), new

    def to_env(self, action: Tensor) -> np.ndarray:
        """Policy action -> what the env steps with (Gaussian actions clipped to the Box)."""
        if isinstance(self.action_space, spaces.Box):
            return torch.maximum(torch.minimum(action, self.act_high), self.act_low).cpu().numpy().astype(np.float32)
        start = np.asarray(getattr(self.action_space, "start", 0), np.int64)  # gymnasium spaces may not start at 0
        return action.cpu().numpy().astype(np.int64) + start


def mode(dist: Distribution) -> Tensor:
    """The most likely action of ``dist`` (mean for the Gaussian)."""
    if isinstance(dist, Independent):
        return dist.base_dist.loc
    if isinstance(dist, Categorical):
        return dist.probs.argmax(-1)
    return dist.mode
