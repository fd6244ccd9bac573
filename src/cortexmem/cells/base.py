"""Cell base classes: a cell maps ``[B, T, hidden_size]`` to ``[B, T, hidden_size]`` and holds flat state keys."""

from __future__ import annotations

from typing import Any

from pydantic import Field

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
    """A recurrent cell. Subclasses set ``self.hidden_size`` and implement the state and sequence hooks."""

    config_class: type[CellConfig]

    def __init__(self, config: CellConfig) -> None:
        super().__init__()
        if config.hidden_size is None:
            raise ValueError(
                f"{type(self).__name__}: hidden_size is None; build the cell inside a block (which infers it) "
                f"or set hidden_size explicitly"
            )
        self.config = config
        self.hidden_size = config.hidden_size
        self.input_size = config.hidden_size

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}"


def build_cell(config: CellConfig, **kwargs: Any) -> MemoryCell:
    """Build the registered cell for ``config``."""
    from ..core.registry import CELLS

    if not isinstance(config, CellConfig):
        raise TypeError(f"build_cell expects a CellConfig, got {type(config).__name__}")
    return CELLS.module_class(config)(config, **kwargs)
