"""Reinforcement learning: TorchRL-compatible stateful modules, per-environment caches, recurrent PPO.

Needs the ``rl`` extra (torchrl, gymnasium; popgym for POPGym environments). Names load lazily so that the
``cortex`` command line starts without importing torchrl.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CortexModule": ".module",
    "CachedCortexModule": ".cache",
    "StateCache": ".cache",
    "PPOConfig": ".ppo",
    "PPOTrainer": ".ppo",
    "RecurrentPolicy": ".policy",
    "gae": ".gae",
    "ppo_loss": ".loss",
    "resolve_stack": ".stacks",
    "stack_config": ".stacks",
    "make_vector_env": ".envs",
    "RepeatKEnv": ".envs",
    "run_bench": ".bench",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cortexmem.rl' has no attribute {name!r}")
    try:
        module = importlib.import_module(_EXPORTS[name], __name__)
    except ImportError as e:
        raise ImportError(f"cortexmem.rl.{name} needs the rl extra: pip install 'cortex-memory[rl]' ({e})") from e
    return getattr(module, name)
