"""cortex-memory: recurrent memory that updates in constant time, for agents and language models."""

from __future__ import annotations

from .blocks import *  # noqa: F403
from .blocks import __all__ as _blocks_all
from .cells import *  # noqa: F403
from .cells import __all__ as _cells_all
from .core.config import TaggedConfig, config_class
from .core.finite import NonFiniteError, enable_finite_check
from .core.graphed import GraphedModule
from .core.module import MemoryModule
from .core.paths import safe_join, safe_name
from .core.registry import list_blocks, list_cells, register_block, register_cell
from .core.step_runner import StepRunner
from .stacks import *  # noqa: F403
from .stacks import __all__ as _stacks_all

__version__ = "0.1.0"

__all__ = [
    "__version__", "TaggedConfig", "config_class", "MemoryModule", "StepRunner", "GraphedModule",
    "NonFiniteError", "enable_finite_check", "safe_join", "safe_name",
    "list_blocks", "list_cells", "register_block", "register_cell",
    *_cells_all, *_blocks_all, *_stacks_all,
]
