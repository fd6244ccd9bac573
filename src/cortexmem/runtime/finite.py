"""Opt-in NaN/Inf guard: names the first module whose output is not finite.

Enabled for every stack built while ``CORTEX_CHECK_FINITE=1`` is set, or explicitly with
``enable_finite_check(module)``. Costs one reduction per module output (a host sync per module on GPU).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


class NonFiniteError(FloatingPointError):
    """Raised by the finite check; ``module_name`` is the first module that produced a NaN or Inf."""

    def __init__(self, module_name: str, module_type: str, what: str) -> None:
        self.module_name, self.module_type = module_name, module_type
        super().__init__(f"non-finite values (NaN/Inf) first produced by {module_name or '<root>'} "
                         f"({module_type}) in its {what}")


def finite_check_requested() -> bool:
    return os.environ.get("CORTEX_CHECK_FINITE", "0") not in ("", "0")


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, tuple | list):
        for o in obj:
            yield from _tensors(o)
    elif hasattr(obj, "values") and hasattr(obj, "batch_size"):  # a TensorDict
        yield from obj.values(include_nested=True, leaves_only=True)


def _bad(obj: Any) -> bool:
    return any(t.is_floating_point() and not torch.isfinite(t).all() for t in _tensors(obj))


def enable_finite_check(module: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Register hooks on ``module`` and every submodule; returns the handles (``h.remove()`` to undo)."""
    def check_input(mod, args, kwargs):
        if _bad(args) or _bad(list(kwargs.values())):
            raise NonFiniteError("<input>", type(mod).__name__, "inputs (x or state) given by the caller")

    from ..core.module import MemoryModule

    handles = [module.register_forward_pre_hook(check_input, with_kwargs=True)]
    for name, sub in module.named_modules():
        def hook(mod, args, output, name=name):
            if _bad(output):
                raise NonFiniteError(name, type(mod).__name__, "output")

        handles.append(sub.register_forward_hook(hook))
        if isinstance(sub, MemoryModule) and "forward_sequence" not in vars(sub):
            # composite modules call children's forward_sequence directly (no __call__, so no hooks): wrap it
            handles.append(_wrap_forward_sequence(sub, name))
    return handles


class _Unwrap:
    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def remove(self) -> None:
        vars(self.module).pop("forward_sequence", None)


def _wrap_forward_sequence(module: nn.Module, name: str) -> _Unwrap:
    inner = module.forward_sequence

    def checked(x, state, resets):
        out = inner(x, state, resets)
        if _bad(out):
            raise NonFiniteError(name, type(module).__name__, "output or new state")
        return out

    module.forward_sequence = checked
    return _Unwrap(module)
