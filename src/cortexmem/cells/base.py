"""Cell base classes: a cell maps ``[B, T, hidden_size]`` to ``[B, T, hidden_size]`` and holds flat state keys."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from tensordict import TensorDict
from torch import Tensor

from ..core.config import TaggedConfig
from ..core.module import MemoryModule


class CellConfig(TaggedConfig):
    """Base config of every cell. ``hidden_size=None`` means "inferred by the enclosing block"."""

    hidden_size: int | None = Field(default=None, ge=1)

    @classmethod
    def example(cls, hidden_size: int) -> CellConfig:
        """A small valid config at ``hidden_size`` (used by the behavioural harness and docs)."""
        return cls(hidden_size=hidden_size)


class MemoryCell(MemoryModule):
    """A recurrent cell. Subclasses implement ``init_state`` and either ``forward_sequence`` (a whole sequence,
    the native form) or ``forward(x, state, *, resets)`` for one step ``[B, H]`` (the peer library's form): the
    other one is derived, and every call still goes through the shared checks of :class:`MemoryModule`."""

    config_class: type[CellConfig]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "forward" in own and "forward_sequence" not in own and not _has_sequence(cls):
            # a step-only cell: its forward is the step; forward itself stays the checked shared entry point
            cls._step_forward = own["forward"]
            cls.forward = MemoryModule.forward

    def __init__(self, config: CellConfig | int | None = None, *, hidden_size: int | None = None) -> None:
        super().__init__()
        if isinstance(config, int) and not isinstance(config, bool):  # the peer's MemoryCell(hidden_size)
            config, hidden_size = None, config
        size = config.hidden_size if isinstance(config, CellConfig) else hidden_size
        if size is None:
            raise ValueError(
                f"{type(self).__name__}: hidden_size is None; build the cell inside a block (which infers it) "
                f"or set hidden_size explicitly"
            )
        if not _has_sequence(type(self)) and getattr(type(self), "_step_forward", None) is None:
            raise TypeError(f"{type(self).__name__} must define forward_sequence(x, state, resets) for a sequence "
                            f"or forward(x, state, *, resets=None) for one step")
        self.config = config
        self.hidden_size = size
        self.input_size = size

    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        """The default for a step-only cell: its ``forward`` over ``t``, resets applied before each step."""
        step = type(self)._step_forward
        state = _fresh_tree(state)  # a step may update its state in place; the caller's stays untouched
        ys = []
        for t in range(x.shape[1]):
            r = None if resets is None else resets[:, t]
            if r is not None:
                state = self.reset_state(state, r)
            y, state = step(self, x[:, t], state, resets=r)  # (B, H_out)
            ys.append(y)
        return torch.stack(ys, dim=1), state  # (B, T, H_out)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}"


def _has_sequence(cls: type) -> bool:
    """Whether a class below ``MemoryCell`` in ``cls``'s MRO defines ``forward_sequence``."""
    for klass in cls.__mro__:
        if klass is MemoryCell:
            return False
        if "forward_sequence" in klass.__dict__:
            return True
    return False


def _fresh_tree(state: TensorDict) -> TensorDict:
    """The same tensors in new (nested) TensorDicts, so setting an entry never reaches the caller's."""
    if not isinstance(state, TensorDict):
        return state
    return TensorDict({k: _fresh_tree(v) if isinstance(v, TensorDict) else v for k, v in state.items()},
                      batch_size=state.batch_size, device=state.device)


def build_cell(config: CellConfig, **kwargs: Any) -> MemoryCell:
    """Build the registered cell for ``config``."""
    from ..core.registry import CELLS

    if not isinstance(config, CellConfig):
        raise TypeError(f"build_cell expects a CellConfig, got {type(config).__name__}")
    return CELLS.module_class(config)(config, **kwargs)
