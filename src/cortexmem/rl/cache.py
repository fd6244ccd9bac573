"""Metta-style per-environment state caches: the policy keeps memory itself, keyed by ``training_env_ids``.

Conventions (as in Metta's recurrent components): a tensordict carries ``bptt`` (steps per row) and ``batch``
(rows), either as batch shape ``[batch, bptt]`` or flattened to ``[batch * bptt]``. ``bptt == 1`` is a
rollout step: the state of each environment comes from, and returns to, the *rollout* cache. ``bptt > 1`` is
a training sequence: each row starts from the *training* cache, the state its environment had when the
current segment began (``begin_segment``), and runs the whole sequence with resets applied inside by the
cells' masks. ``dones``/``truncateds`` (and ``is_init``) are stored with the observation they came with:
auto-resetting envs return the next episode's first observation together with ``done=True``, so a set flag
means "reset before reading this observation".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import Tensor

from ..core.module import MemoryModule
from ..utils.io import CheckpointError, atomic_save_safetensors, load_safetensors_checked, one_line
from .module import _key, resolve_store_dtype


class StateCache:
    """Rollout and training state caches of ``num_envs`` rows for one stack (stored in ``store_dtype``)."""

    def __init__(
        self,
        stack: MemoryModule,
        num_envs: int,
        *,
        store_dtype: str | torch.dtype = "fp32",
        device: Any = None,
    ) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        self.stack = stack
        self.num_envs = num_envs
        self.store_dtype = resolve_store_dtype(store_dtype)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.rollout = self._fresh()
        self.training = self._fresh()

    def _fresh(self) -> TensorDict:
        return self._to_store(self.stack.init_state(self.num_envs, device=self.device, dtype=torch.float32))

    def _to_store(self, state: TensorDictBase) -> TensorDict:
        return state.apply(lambda v: v.detach().to(self.store_dtype) if v.is_floating_point() else v.detach())

    def _check_ids(self, env_ids: Tensor) -> Tensor:
        if not isinstance(env_ids, Tensor) or env_ids.dim() != 1 or env_ids.is_floating_point():
            raise TypeError(f"env_ids must be a 1-D integer tensor, got {getattr(env_ids, 'shape', env_ids)!r}")
        if env_ids.numel() and (int(env_ids.min()) < 0 or int(env_ids.max()) >= self.num_envs):
            raise ValueError(
                f"env_ids must lie in [0, {self.num_envs}), got range [{int(env_ids.min())}, {int(env_ids.max())}]"
            )
        return env_ids.to(self.device, torch.long)

    def gather(self, which: str, env_ids: Tensor, dtype: torch.dtype = torch.float32) -> TensorDict:
        """The cached state rows of ``env_ids`` from ``which`` ("rollout"|"training"), cast to ``dtype``."""
        src = self._cache(which)[self._check_ids(env_ids)]
        return src.apply(lambda v: v.to(dtype) if v.is_floating_point() else v)

    def scatter(self, which: str, env_ids: Tensor, state: TensorDictBase) -> None:
        """Write ``state`` (detached, in store dtype) into rows ``env_ids`` of ``which``."""
        ids = self._check_ids(env_ids)
        self._cache(which)[ids] = self._to_store(state).to(self.device)

    def begin_segment(self, env_ids: Tensor | None = None) -> None:
        """Record the rollout state of ``env_ids`` (default all) as the start of their next segment."""
        if env_ids is None:
            self.training = self.rollout.clone()
        else:
            ids = self._check_ids(env_ids)
            self.training[ids] = self.rollout[ids]

    def reset(self, env_ids: Tensor | None = None) -> None:
        """Return both caches of ``env_ids`` (all by default) to the initial state."""
        fresh = self._fresh()
        if env_ids is None:
            self.rollout, self.training = fresh, fresh.clone()
        else:
            ids = self._check_ids(env_ids)
            self.rollout[ids] = fresh[ids]
            self.training[ids] = fresh[ids]

    def get_memory(self) -> dict[str, TensorDict]:
        """A copy of both caches, for checkpointing."""
        return {"rollout": self.rollout.clone(), "training": self.training.clone()}

    def set_memory(self, memory: dict[str, TensorDictBase]) -> None:
        """Restore caches written by :meth:`get_memory` (structure and shapes are checked)."""
        if not isinstance(memory, dict) or set(memory) != {"rollout", "training"}:
            got = sorted(memory) if isinstance(memory, dict) else type(memory).__name__
            raise ValueError(f"set_memory expects a dict with keys ['rollout', 'training'], got {got}")
        ref = self._fresh()
        want = {k: v.shape for k, v in ref.items(include_nested=True, leaves_only=True)}
        for name, td in memory.items():
            if not isinstance(td, TensorDictBase):
                raise TypeError(f"set_memory: {name} must be a TensorDict, got {type(td).__name__}")
            got = {k: v.shape for k, v in td.items(include_nested=True, leaves_only=True)}
            if got != want:
                raise ValueError(f"set_memory: {name} has entries {got}, expected {want}")
        self.rollout = self._to_store(memory["rollout"]).to(self.device)
        self.training = self._to_store(memory["training"]).to(self.device)

    def save(self, path: str | os.PathLike) -> None:
        """Write both caches to one safetensors file (atomically; keys ``<cache>/<state path>``)."""
        tensors = {
            "/".join((which, *_key(k))): v.contiguous()
            for which, td in self.get_memory().items()
            for k, v in td.items(include_nested=True, leaves_only=True)
        }
        atomic_save_safetensors(path, tensors, metadata={"format": "cortexmem.rl.state_cache"})

    def load(self, path: str | os.PathLike) -> None:
        """Restore caches written by :meth:`save` (checked like :meth:`set_memory`)."""
        memory = {"rollout": self._fresh(), "training": self._fresh()}
        for name, v in load_safetensors_checked(path, what="state cache file").items():
            which, *rest = name.split("/")
            if which not in memory or not rest:
                raise CheckpointError(f"state cache file {path}: unexpected entry {name!r}, expected rollout/... or "
                                      f"training/...")
            memory[which].set(tuple(rest), v)
        try:
            self.set_memory(memory)
        except (ValueError, TypeError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"state cache file {path} does not fit this cache ({one_line(e)[:200]})") from None

    def _cache(self, which: str) -> TensorDict:
        if which == "rollout":
            return self.rollout
        if which == "training":
            return self.training
        raise ValueError(f"cache must be 'rollout' or 'training', got {which!r}")


class CachedCortexModule(TensorDictModuleBase):
    """Run ``stack`` on ``td[in_key]`` with per-environment memory held in a :class:`StateCache`."""

    def __init__(
        self,
        stack: MemoryModule,
        in_key: NestedKey,
        out_key: NestedKey,
        num_envs: int,
        *,
        store_dtype: str | torch.dtype = "fp32",
        reset_keys: Sequence[NestedKey] = ("is_init", "dones", "truncateds"),
        env_ids_key: NestedKey = "training_env_ids",
    ) -> None:
        super().__init__()
        self.stack = stack
        self.cache = StateCache(stack, num_envs, store_dtype=store_dtype)
        self.in_key, self.out_key = _key(in_key), _key(out_key)
        self.reset_keys = [_key(k) for k in reset_keys]
        self.env_ids_key = _key(env_ids_key)
        self.in_keys = [self.in_key, ("bptt",), ("batch",), self.env_ids_key, *self.reset_keys]
        self.out_keys = [self.out_key]

    def get_memory(self) -> dict[str, TensorDict]:
        return self.cache.get_memory()

    def set_memory(self, memory: dict[str, TensorDictBase]) -> None:
        self.cache.set_memory(memory)

    def reset_memory(self, env_ids: Tensor | None = None) -> None:
        self.cache.reset(env_ids)

    def begin_segment(self, env_ids: Tensor | None = None) -> None:
        self.cache.begin_segment(env_ids)

    def _layout(self, td: TensorDictBase) -> tuple[int, int]:
        if td.ndim == 2:
            return td.shape[0], td.shape[1]
        bptt, batch = td.get("bptt", None), td.get("batch", None)
        if bptt is None or batch is None:
            raise ValueError(
                "CachedCortexModule: a flat tensordict needs 'bptt' and 'batch' entries "
                f"(or batch shape [batch, bptt]); got batch shape {list(td.shape)}"
            )
        bptt, batch = int(bptt.reshape(-1)[0]), int(batch.reshape(-1)[0])
        if bptt * batch != td.shape.numel():
            raise ValueError(
                f"CachedCortexModule: batch * bptt = {batch} * {bptt} does not match {td.shape.numel()} rows"
            )
        return batch, bptt

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        batch, bptt = self._layout(td)
        x = td.get(self.in_key)
        x = x.reshape(batch, bptt, x.shape[-1])
        ids = td.get(self.env_ids_key).reshape(batch, bptt)[:, 0]
        resets = None
        for key in self.reset_keys:
            v = td.get(key, None)
            if v is not None:
                v = v.reshape(batch, bptt).bool()
                resets = v if resets is None else resets | v
        dtype = next((p.dtype for p in self.stack.parameters() if p.is_floating_point()), torch.float32)
        which = "rollout" if bptt == 1 else "training"
        state = self.cache.gather(which, ids, dtype).to(x.device)
        y, new = self.stack(x, state, resets=resets)
        if bptt == 1:
            self.cache.scatter("rollout", ids, new)
        td.set(self.out_key, y.reshape(*td.shape, y.shape[-1]))
        return td
