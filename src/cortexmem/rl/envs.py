"""Environments for the PPO runner: flat observations, POPGym's benchmark wrapping, a k-step recall task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

REPEAT_K_ID = "cortexmem/RepeatK-v0"


def space_width(space: spaces.Space) -> int:
    """Width of :func:`encode` for ``space`` (one-hot for discrete parts)."""
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(np.asarray(space.nvec).sum())
    if isinstance(space, spaces.MultiBinary):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Tuple):
        return sum(space_width(s) for s in space.spaces)
    if isinstance(space, spaces.Dict):
        return sum(space_width(s) for s in space.spaces.values())
    raise TypeError(
        f"unsupported observation space {space!r}; expected Discrete, MultiDiscrete, MultiBinary, Box, Tuple or Dict"
    )


def encode(space: spaces.Space, value: Any) -> np.ndarray:
    """One value of ``space`` -> float32 vector of width :func:`space_width` (discrete parts one-hot)."""
    if isinstance(space, spaces.Discrete):
        out = np.zeros(int(space.n), np.float32)
        out[int(value) - int(space.start)] = 1.0
        return out
    if isinstance(space, spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec).reshape(-1)
        starts = np.concatenate([[0], np.cumsum(nvec)[:-1]])  # one scatter instead of one one-hot per part
        out = np.zeros(int(nvec.sum()), np.float32)
        out[starts + np.asarray(value, np.int64).reshape(-1) - np.asarray(space.start).reshape(-1)] = 1.0
        return out
    if isinstance(space, spaces.MultiBinary | spaces.Box):
        return np.asarray(value, np.float32).reshape(-1)
    if isinstance(space, spaces.Tuple):
        return np.concatenate([encode(s, v) for s, v in zip(space.spaces, value, strict=True)])
    if isinstance(space, spaces.Dict):
        return np.concatenate([encode(s, value[k]) for k, s in space.spaces.items()])
    raise TypeError(f"unsupported space {space!r}")


class FlatObservation(gym.Wrapper):
    """Flat float observation; ``memory_inputs`` adds the previous action and a first-step flag (POPGym)."""

    def __init__(self, env: gym.Env, *, memory_inputs: bool = False) -> None:
        super().__init__(env)
        self.memory_inputs = memory_inputs
        self._obs_w = space_width(env.observation_space)
        self._act_w = space_width(env.action_space) if memory_inputs else 0
        width = self._obs_w + self._act_w + (1 if memory_inputs else 0)
        self.observation_space = spaces.Box(-np.inf, np.inf, (width,), np.float32)

    def _wrap(self, obs: Any, action: Any, first: bool) -> np.ndarray:
        parts = [encode(self.env.observation_space, obs)]
        if self.memory_inputs:
            prev = np.zeros(self._act_w, np.float32) if first else encode(self.env.action_space, action)
            parts += [prev, np.array([1.0 if first else 0.0], np.float32)]
        return np.concatenate(parts)

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        return self._wrap(obs, None, True), info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._wrap(obs, action, False), reward, terminated, truncated, info


class RepeatKEnv(gym.Env):
    """One of ``n`` symbols per step; from step ``k`` on, +-1/(L-k) for naming the symbol of k steps ago.

    A memoryless policy scores 2/n - 1 in expectation (0 for n=2); a perfect one scores 1.
    """

    metadata: dict = {"render_modes": []}

    def __init__(self, k: int = 2, n: int = 2, length: int = 16) -> None:
        if not (1 <= k < length) or n < 2:
            raise ValueError(f"RepeatKEnv needs 1 <= k < length and n >= 2, got k={k}, n={n}, length={length}")
        self.k, self.n, self.length = k, n, length
        self.observation_space = spaces.Discrete(n)
        self.action_space = spaces.Discrete(n)
        self._symbols = np.zeros(length, np.int64)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._symbols = self.np_random.integers(0, self.n, self.length)
        self._t = 0
        return int(self._symbols[0]), {}

    def step(self, action: Any):
        t = self._t
        reward = 0.0
        if t >= self.k:
            reward = (1.0 if int(action) == int(self._symbols[t - self.k]) else -1.0) / (self.length - self.k)
        self._t += 1
        done = self._t >= self.length
        obs = int(self._symbols[min(self._t, self.length - 1)])
        return obs, reward, done, False, {}


if REPEAT_K_ID not in gym.registry:
    gym.register(id=REPEAT_K_ID, entry_point=RepeatKEnv)


def popgym_families() -> list[str]:
    """POPGym environment families (class names without the Easy/Medium/Hard suffix); empty without popgym."""
    try:
        import popgym.envs
    except ImportError:
        return []
    names = {n.removesuffix(d) for n in dir(popgym.envs) for d in ("Easy", "Medium", "Hard") if n.endswith(d)}
    return sorted(names)


def unknown_env_message(env_id: str, detail: str = "") -> str:
    """One line naming the env families the runner accepts."""
    fams = popgym_families()
    popgym_part = (
        f"POPGym <Family><Easy|Medium|Hard> or popgym-<Name>-v0 with families {', '.join(fams)}"
        if fams
        else "POPGym names (install popgym)"
    )
    why = f" ({detail})" if detail else ""
    return (
        f"unknown environment {env_id!r}{why}: expected a Gymnasium id such as CartPole-v1, {popgym_part}, "
        f"or {REPEAT_K_ID}"
    )


def is_popgym(env_id: str) -> bool:
    """``popgym-<Name>-v0`` or a bare POPGym class name such as ``RepeatPreviousEasy``."""
    if env_id.startswith("popgym-"):
        return True
    if "/" in env_id or "-v" in env_id:
        return False
    try:
        import popgym.envs
    except ImportError:
        return False
    return isinstance(getattr(popgym.envs, env_id, None), type)


def make_env_fn(
    env_id: str, *, memory_inputs: bool | None = None, env_kwargs: dict | None = None
) -> Callable[[], gym.Env]:
    """A thunk building one flat-observation env; POPGym envs get previous action + first-step flag."""
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env must be a non-empty string, got {env_id!r}")
    popgym_env = is_popgym(env_id)
    wrap = popgym_env if memory_inputs is None else memory_inputs
    kwargs = dict(env_kwargs or {})

    def thunk() -> gym.Env:
        if popgym_env:
            try:
                import popgym.envs
            except ImportError as e:
                raise ImportError("POPGym environments need the popgym package: pip install popgym") from e
            name = env_id[len("popgym-") :].rsplit("-v", 1)[0] if env_id.startswith("popgym-") else env_id
            cls = getattr(popgym.envs, name, None)
            if not isinstance(cls, type):
                raise ValueError(unknown_env_message(env_id))
            env = cls(**kwargs)
            env = gym.wrappers.TimeLimit(env, max_episode_steps=getattr(env, "max_episode_length", 1024) + 1)
        else:
            try:
                env = gym.make(env_id, **kwargs)
            except gym.error.Error as e:  # gymnasium's own errors are not ValueErrors; callers expect one
                raise ValueError(unknown_env_message(env_id, str(e).splitlines()[0] if str(e) else "")) from None
        _check_spaces(env_id, env)
        return FlatObservation(env, memory_inputs=wrap)

    return thunk


def _check_spaces(env_id: str, env: gym.Env) -> None:
    try:
        space_width(env.observation_space)
    except TypeError:
        raise TypeError(
            f"environment {env_id!r} has observation space {env.observation_space}, which the runner does not "
            "support: expected Discrete, MultiDiscrete, MultiBinary, Box, or a Tuple/Dict of those"
        ) from None
    act = env.action_space
    ok = isinstance(act, spaces.Discrete | spaces.MultiDiscrete) or (
        isinstance(act, spaces.Box) and len(act.shape) == 1
    )
    if isinstance(act, spaces.MultiDiscrete) and np.asarray(act.nvec).ndim != 1:
        ok = False
    if not ok:
        raise TypeError(
            f"environment {env_id!r} has action space {act}, which the runner does not support: expected "
            "Discrete, a 1-D MultiDiscrete or a 1-D Box"
        )


def check_env(
    env_id: str, *, memory_inputs: bool | None = None, env_kwargs: dict | None = None
) -> tuple[int, spaces.Space]:
    """Build one env (raising one clear line for unknown ids or unsupported spaces): ``(obs width, action space)``."""
    env = make_env_fn(env_id, memory_inputs=memory_inputs, env_kwargs=env_kwargs)()
    try:
        return int(env.observation_space.shape[0]), env.action_space
    finally:
        env.close()


def make_vector_env(
    env_id: str, num_envs: int, *, memory_inputs: bool | None = None, env_kwargs: dict | None = None
) -> gym.vector.SyncVectorEnv:
    """``num_envs`` copies in a synchronous vector env that resets finished envs within the same step.

    An env that ends by truncation reports its last observation in ``info["final_obs"]`` (PPO bootstraps from it).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    fn = make_env_fn(env_id, memory_inputs=memory_inputs, env_kwargs=env_kwargs)
    return gym.vector.SyncVectorEnv([fn] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
