"""``CortexModule``: a cortexmem stack as a TorchRL recurrent TensorDict module (step and sequence mode)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.modules.tensordict_module.rnn import recurrent_mode

from ..core.module import MemoryModule

_STORE_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def resolve_store_dtype(store_dtype: str | torch.dtype) -> torch.dtype:
    """``"fp32"|"bf16"|torch.float32|torch.bfloat16`` -> dtype."""
    if isinstance(store_dtype, torch.dtype) and store_dtype in (torch.float32, torch.bfloat16):
        return store_dtype
    if isinstance(store_dtype, str) and store_dtype.lower() in _STORE_DTYPES:
        return _STORE_DTYPES[store_dtype.lower()]
    raise ValueError(f"store_dtype must be one of fp32, bf16 (or the torch dtypes), got {store_dtype!r}")


def state_names(stack: MemoryModule) -> list[tuple[str, tuple[str, ...]]]:
    """``[(flat name, nested path)]`` of every leaf of ``stack``'s state, in a fixed order."""
    return [(".".join(path), path) for path in stack.state_spec()]


def _key(k: NestedKey) -> tuple[str, ...]:
    return (k,) if isinstance(k, str) else tuple(k)


class CortexModule(TensorDictModuleBase):
    """Run ``stack`` on ``td[in_key]`` and write ``td[out_key]`` plus ``td["next", state_prefix, ...]``.

    Step mode (default; used by collectors): any batch shape ``[*B]``. Reads the state stored under
    ``state_prefix`` (one flat entry per state leaf, e.g. ``"PassThroughBlock_0.LSTMCell.h"``) and a reset
    flag (``is_init`` from TorchRL's ``InitTracker``; further ``reset_keys`` present, such as the previous
    step's ``done``/``truncated``, are OR-ed in). A missing state means "fresh state".

    Sequence mode (inside ``torchrl.modules.set_recurrent_mode(True)``, which TorchRL losses enable): batch
    ``[B, T]`` (time last; ``[T]`` and ``[*B, T]`` are reshaped). The stored state at ``t = 0`` starts each
    row; resets inside the sequence are applied by the cells' own reset masks, so no split-and-pad is needed.
    The ``("next", state)`` entries follow TorchRL's LSTMModule: zeros except the final state at ``T - 1``.
    """

    def __init__(
        self,
        stack: MemoryModule,
        in_key: NestedKey,
        out_key: NestedKey,
        *,
        state_prefix: str = "cortex_state",
        store_dtype: str | torch.dtype = "fp32",
        reset_keys: Sequence[NestedKey] = ("is_init",),
        default_recurrent_mode: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(stack, MemoryModule):
            raise TypeError(f"CortexModule expects a cortexmem MemoryModule stack, got {type(stack).__name__}")
        if not isinstance(state_prefix, str) or not state_prefix:
            raise ValueError(f"state_prefix must be a non-empty string, got {state_prefix!r}")
        if len(reset_keys) == 0:
            raise ValueError("reset_keys must name at least one key (TorchRL's InitTracker writes 'is_init')")
        self.stack = stack
        self.in_key, self.out_key = _key(in_key), _key(out_key)
        self.state_prefix = state_prefix
        self.store_dtype = resolve_store_dtype(store_dtype)
        self.reset_keys = [_key(k) for k in reset_keys]
        self.default_recurrent_mode = bool(default_recurrent_mode)
        self._names = state_names(stack)
        self.state_keys = [(state_prefix, name) for name, _ in self._names]
        self.in_keys = [self.in_key, *self.reset_keys, *self.state_keys]
        self.out_keys = [self.out_key, *[("next", *k) for k in self.state_keys]]

    # --- state conversion ---------------------------------------------------------------------
    def _compute_dtype(self) -> torch.dtype:
        for p in self.stack.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def _store(self, v: Tensor) -> Tensor:
        return v.to(self.store_dtype) if v.is_floating_point() else v

    def flatten_state(self, state: TensorDictBase) -> dict[tuple[str, str], Tensor]:
        """Stack state (nested) -> ``{(state_prefix, flat name): tensor in store dtype}``."""
        return {(self.state_prefix, name): self._store(state.get(path)) for name, path in self._names}

    def unflatten_state(self, flat: dict[tuple[str, str], Tensor], batch: int) -> TensorDict:
        """``{(state_prefix, flat name): [batch, ...]}`` -> the stack's nested state in compute dtype."""
        dtype = self._compute_dtype()
        out = TensorDict({}, batch_size=[batch])
        for (_name, path), key in zip(self._names, self.state_keys, strict=True):
            v = flat[key]
            out.set(path, v.to(dtype) if v.is_floating_point() else v)
        return out

    def initial_state(self, batch: int, device: Any = None) -> TensorDict:
        """A fresh stack state for ``batch`` rows in compute dtype."""
        return self.stack.init_state(batch, device=device, dtype=self._compute_dtype())

    def stored_initial_state(self, batch_shape: Sequence[int], device: Any = None) -> TensorDict:
        """``{state_prefix: {flat name: initial value}}`` of batch ``batch_shape`` in store dtype."""
        shape = torch.Size(batch_shape)
        flat = self.flatten_state(self.initial_state(1, device=device))
        out = TensorDict({}, batch_size=shape, device=device)
        for key, v in flat.items():
            out.set(key, v[0].expand(*shape, *v.shape[1:]).clone())
        return out

    # --- TorchRL glue -------------------------------------------------------------------------
    def make_tensordict_primer(self):
        """A ``TensorDictPrimer`` declaring the state entries (use with ``InitTracker``)."""
        from torchrl.data import Unbounded
        from torchrl.envs.transforms import TensorDictPrimer

        spec = self.stack.state_spec()
        init = self.stored_initial_state([])
        specs, defaults = {}, {}
        for (_name, path), key in zip(self._names, self.state_keys, strict=True):
            shape, dtype = spec[path]
            specs[key] = Unbounded(shape=shape, dtype=self.store_dtype if dtype.is_floating_point else dtype)
            # the primer fills scalars; a non-constant initial value is restored by is_init at the first step
            v = init[key]
            flat = v.reshape(-1)
            constant = flat.numel() > 0 and bool((flat == flat[0]).all())
            defaults[key] = flat[0].item() if constant else 0.0
        return TensorDictPrimer(specs, default_value=defaults, expand_specs=True)

    @property
    def recurrent_mode(self) -> bool:
        mode = recurrent_mode()
        return self.default_recurrent_mode if mode is None else bool(mode)

    # --- forward ------------------------------------------------------------------------------
    def _resets(self, td: TensorDictBase, shape: torch.Size) -> Tensor | None:
        mask = None
        for key in self.reset_keys:
            v = td.get(key, None)
            if v is None:
                continue
            v = v.reshape(shape) if v.numel() == shape.numel() else None
            if v is None:
                raise ValueError(
                    f"CortexModule: reset key {key} must have shape {list(shape)} or {[*shape, 1]}, "
                    f"got {list(td.get(key).shape)}"
                )
            v = v.bool()
            mask = v if mask is None else mask | v
        return mask

    def _read_state(self, td: TensorDictBase, batch_shape: torch.Size) -> dict | None:
        present = [k for k in self.state_keys if td.get(k, None) is not None]
        if not present:
            return None
        if len(present) != len(self.state_keys):
            missing = [k for k in self.state_keys if k not in present]
            raise ValueError(f"CortexModule: state entries {missing} are missing (found {present})")
        spec = self.stack.state_spec()
        flat = {}
        for (_name, path), key in zip(self._names, self.state_keys, strict=True):
            v = td.get(key)
            want = (*batch_shape, *spec[path][0])
            if tuple(v.shape) != want:
                raise ValueError(f"CortexModule: state entry {key} has shape {tuple(v.shape)}, expected {want}")
            flat[key] = v
        return flat

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        x = tensordict.get(self.in_key)
        if x.shape[:-1] != tensordict.shape:
            raise ValueError(
                f"CortexModule: {self.in_key} must be [*batch, features], batch {list(tensordict.shape)}, "
                f"got {list(x.shape)}"
            )
        if self.recurrent_mode:
            return self._forward_sequence(tensordict, x)
        return self._forward_step(tensordict, x)

    def _forward_step(self, td: TensorDictBase, x: Tensor) -> TensorDictBase:
        shape = td.shape
        n = shape.numel()
        resets = self._resets(td, shape)
        flat = self._read_state(td, shape)
        if flat is None:
            state = self.initial_state(n, device=x.device)
        else:
            state = self.unflatten_state({k: v.reshape(n, *v.shape[len(shape) :]) for k, v in flat.items()}, n)
        y, new = self.stack(x.reshape(n, x.shape[-1]), state, resets=None if resets is None else resets.reshape(n))
        td.set(self.out_key, y.reshape(*shape, y.shape[-1]))
        for key, v in self.flatten_state(new).items():
            td.set(("next", *key), v.reshape(*shape, *v.shape[1:]))
        return td

    def _forward_sequence(self, td: TensorDictBase, x: Tensor) -> TensorDictBase:
        shape = td.shape
        if len(shape) == 0:
            raise ValueError("CortexModule in recurrent mode needs a tensordict with a time dimension, got shape []")
        steps = shape[-1]
        batch = shape[:-1].numel()
        resets = self._resets(td, shape)
        flat = self._read_state(td, shape)
        if flat is None:
            state = self.initial_state(batch, device=x.device)
        else:
            t_dim = len(shape) - 1
            first = {k: v.select(t_dim, 0).reshape(batch, *v.shape[t_dim + 1 :]) for k, v in flat.items()}
            state = self.unflatten_state(first, batch)
        y, final = self.stack(
            x.reshape(batch, steps, x.shape[-1]),
            state,
            resets=None if resets is None else resets.reshape(batch, steps),
        )
        td.set(self.out_key, y.reshape(*shape, y.shape[-1]))
        for key, v in self.flatten_state(final).items():
            # TorchRL's convention: only the last step carries the true next state in sequence mode.
            full = torch.zeros(batch, steps, *v.shape[1:], dtype=v.dtype, device=v.device)
            full[:, -1] = v
            td.set(("next", *key), full.reshape(*shape, *v.shape[1:]))
        return td
