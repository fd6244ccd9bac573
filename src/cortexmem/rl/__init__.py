"""Reinforcement learning: TorchRL-compatible stateful modules, per-environment caches, recurrent PPO."""

from __future__ import annotations

try:
    import torchrl  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("cortexmem.rl needs torchrl and gymnasium: pip install 'cortex-memory[rl]'") from e

from .cache import CachedCortexModule, StateCache
from .module import CortexModule

__all__ = ["CortexModule", "CachedCortexModule", "StateCache"]
