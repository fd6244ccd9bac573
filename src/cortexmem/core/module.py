"""``MemoryModule``: the one interface shared by cells, blocks, columns and stacks.

``forward(x, state=None, *, resets=None) -> (y, new_state)`` with ``x`` ``[B, T, H]`` (sequence) or ``[B, H]``
(one step). ``resets`` is bool ``[B, T]`` or ``[B]``; ``resets[b, t]`` returns row ``b``'s state to its initial
value *before* ``x[b, t]`` is read. A ``[B]`` mask in sequence mode means "reset before the first step".

Subclasses implement ``init_state`` and ``forward_sequence`` (always ``[B, T, H]`` and ``[B, T]``-or-None
resets); this base class validates the call once at the entry point, so composite modules call their children's
``forward_sequence`` directly. A lower layer may prepare a module's first call through :data:`FIRST_CALL`
(:mod:`cortexmem.ops.precompile` compiles the Triton kernels of a first CUDA call in parallel).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor, nn

#: ``FIRST_CALL(dry_call, device) -> bool``: prepares a module's first call on ``device`` (True when it did, so it
#: is not asked again); set by :mod:`cortexmem.ops.precompile` at import, None where nothing prepares first calls
FIRST_CALL: Callable[[Callable[[], Any], torch.device], bool] | None = None


class MemoryModule(nn.Module, ABC):
    """Base class of every stateful cortexmem module."""

    #: expected size of the last dimension of ``x``
    input_size: int

    # --- to implement -------------------------------------------------------------------------
    @abstractmethod
    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        """A fresh state for ``batch`` rows (TensorDict with ``batch_size=[batch]``)."""

    @abstractmethod
    def forward_sequence(
        self, x: Tensor, state: TensorDict, resets: Tensor | None
    ) -> tuple[Tensor, TensorDict]:
        """``x`` ``[B, T, H]``, ``resets`` bool ``[B, T]`` or None -> ``(y [B, T, H_out], new_state)``."""

    # --- shared behaviour ---------------------------------------------------------------------
    def forward(
        self, x: Tensor, state: TensorDict | None = None, *, resets: Tensor | None = None
    ) -> tuple[Tensor, TensorDict]:
        x, is_step = self._check_x(x)
        batch, steps = x.shape[0], x.shape[1]
        resets = self._check_resets(resets, batch, steps, is_step, x.device)
        if state is None:
            state = self.init_state(batch, device=x.device, dtype=x.dtype)
        else:
            self._check_state(state, batch)
        if FIRST_CALL is not None and not self.__dict__.get("_cortex_precompiled", False):
            if FIRST_CALL(lambda: self.forward_sequence(x, state, resets), x.device):
                self.__dict__["_cortex_precompiled"] = True
        y, new_state = self.forward_sequence(x, state, resets)
        return (y[:, 0] if is_step else y), new_state

    def step(
        self, x: Tensor, state: TensorDict | None = None, *, resets: Tensor | None = None
    ) -> tuple[Tensor, TensorDict]:
        """One step: ``x`` ``[B, H]``, ``resets`` ``[B]`` -> ``(y [B, H_out], new_state)``."""
        if not isinstance(x, Tensor) or x.dim() != 2:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"step expects x of shape [B, {self.input_size}], got {got}")
        return self.forward(x, state, resets=resets)

    def reset_state(self, state: TensorDict, mask: Tensor) -> TensorDict:
        """Return a new state where rows with ``mask[b] = True`` hold their initial value."""
        batch = state.batch_size[0]
        mask = _as_bool_mask(mask, (batch,), "mask", state.device)
        return reset_rows(state, mask, self.init_state(batch, device=mask.device, dtype=_float_dtype(state)))

    def state_spec(self) -> dict[tuple[str, ...], tuple[tuple[int, ...], torch.dtype]]:
        """``{key path: (shape without batch, dtype)}`` of this module's state."""
        spec = getattr(self, "_state_spec_cache", None)
        if spec is None:
            td = self.init_state(1, device="meta", dtype=torch.float32)
            spec = {
                _key_tuple(k): (tuple(v.shape[1:]), v.dtype)
                for k, v in td.items(include_nested=True, leaves_only=True)
            }
            object.__setattr__(self, "_state_spec_cache", spec)
        return spec

    # --- validation ---------------------------------------------------------------------------
    def _check_x(self, x: Any) -> tuple[Tensor, bool]:
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name}: x must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() not in (2, 3):
            raise ValueError(
                f"{name}: x must be [B, T, {self.input_size}] or [B, {self.input_size}], got shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"{name}: expected feature size {self.input_size} in the last dim of x, got {x.shape[-1]} "
                f"(shape {tuple(x.shape)})"
            )
        if x.shape[0] == 0 or (x.dim() == 3 and x.shape[1] == 0):
            raise ValueError(f"{name}: x must have B >= 1 and T >= 1, got shape {tuple(x.shape)}")
        param = next(self.parameters(), None)
        if param is not None and param.is_floating_point():
            if x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
                raise TypeError(f"{name}: x has dtype {x.dtype} but the module's parameters are {param.dtype}; "
                                f"cast one of them (e.g. module.to({x.dtype}))")
            if x.device != param.device:
                raise ValueError(f"{name}: x is on {x.device} but the module is on {param.device}")
        is_step = x.dim() == 2
        return (x.unsqueeze(1) if is_step else x), is_step

    def _check_resets(
        self, resets: Any, batch: int, steps: int, is_step: bool, device: torch.device
    ) -> Tensor | None:
        if resets is None:
            return None
        name = type(self).__name__
        if not isinstance(resets, Tensor):
            raise TypeError(f"{name}: resets must be a bool tensor, got {type(resets).__name__}")
        if resets.dim() == 1:
            mask = _as_bool_mask(resets, (batch,), f"{name}: resets", device)
            if is_step:
                return mask.unsqueeze(1)
            full = torch.zeros(batch, steps, dtype=torch.bool, device=device)
            full[:, 0] = mask
            return full
        if is_step:
            raise ValueError(f"{name}: in step mode resets must be [B]=[{batch}], got {tuple(resets.shape)}")
        return _as_bool_mask(resets, (batch, steps), f"{name}: resets", device)

    def _check_state(self, state: Any, batch: int) -> None:
        name = type(self).__name__
        if not isinstance(state, TensorDict):
            raise TypeError(f"{name}: state must be a TensorDict or None, got {type(state).__name__}")
        if len(state.batch_size) < 1 or state.batch_size[0] != batch:
            raise ValueError(
                f"{name}: state has batch size {tuple(state.batch_size)}, expected ({batch},) to match x"
            )
        spec = self.state_spec()
        got = {
            _key_tuple(k): v for k, v in state.items(include_nested=True, leaves_only=True)
        }
        if set(got) != set(spec):
            missing = sorted("/".join(k) for k in set(spec) - set(got))
            extra = sorted("/".join(k) for k in set(got) - set(spec))
            raise ValueError(
                f"{name}: state structure does not match this module; missing keys {missing}, "
                f"unexpected keys {extra}"
            )
        for key, (shape, _dtype) in spec.items():
            if tuple(got[key].shape[1:]) != shape:
                raise ValueError(
                    f"{name}: state entry {'/'.join(key)} has shape {tuple(got[key].shape)}, "
                    f"expected {(batch, *shape)}"
                )


def reset_rows(state: TensorDict, mask: Tensor, init: TensorDict) -> TensorDict:
    """Rows where ``mask`` is True take ``init``'s value (``torch.where``, differentiable)."""

    def pick(current: Tensor, fresh: Tensor) -> Tensor:
        m = mask.view(-1, *([1] * (current.dim() - 1)))
        return torch.where(m, fresh.to(device=current.device, dtype=current.dtype), current)

    return state.apply(pick, init)


def _as_bool_mask(mask: Any, shape: tuple[int, ...], what: str, device: Any) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{what} must be a bool tensor of shape {list(shape)}, got {type(mask).__name__}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{what} must have shape {list(shape)}, got {list(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"{what} must be bool (or integer 0/1), got dtype {mask.dtype}")
        mask = mask != 0
    return mask.to(device)


def _float_dtype(state: TensorDict) -> torch.dtype:
    for v in state.values(include_nested=True, leaves_only=True):
        if v.is_floating_point():
            return v.dtype
    return torch.float32


def _key_tuple(key: str | tuple[str, ...]) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else tuple(key)
