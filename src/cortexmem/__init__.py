"""cortex-memory: recurrent memory that updates in constant time, for agents and language models.

``import cortexmem`` is cheap: the cells, blocks and stacks (and torch) are imported on first use of any public
name, so ``cortex --help`` and tools that only need ``cortexmem.core.io`` start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: the public names that are not the cells', blocks' or stacks' own ``__all__``: name -> module
_CORE_NAMES = {
    "TaggedConfig": ".core.config", "config_class": ".core.config",
    "NonFiniteError": ".core.finite", "enable_finite_check": ".core.finite",
    "GraphedModule": ".core.graphed", "MemoryModule": ".core.module",
    "safe_join": ".core.paths", "safe_name": ".core.paths",
    "list_blocks": ".core.registry", "list_cells": ".core.registry",
    "register_block": ".core.registry", "register_cell": ".core.registry",
    "StepRunner": ".core.step_runner",
}
_PACKAGES = (".cells", ".blocks", ".stacks")
_SUBMODULES = {"blocks", "cells", "core", "stacks", "ops", "evals", "llm", "lm", "rl", "tools", "clikit", "cli"}
_loaded = False


def _load() -> None:
    """Import cells, blocks and stacks (registering every built-in) and bind the public names here."""
    global _loaded, __all__
    if _loaded:
        return
    names: list[str] = ["__version__"]
    for name, mod in _CORE_NAMES.items():
        globals()[name] = getattr(importlib.import_module(mod, __name__), name)
        names.append(name)
    for pkg in _PACKAGES:
        module = importlib.import_module(pkg, __name__)
        for name in module.__all__:
            globals()[name] = getattr(module, name)
        names += list(module.__all__)
    __all__ = names
    _loaded = True


def __getattr__(name: str) -> Any:
    if name.startswith("__") and name != "__all__":
        raise AttributeError(name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    _load()
    if name in globals():
        return globals()[name]
    raise AttributeError(f"module 'cortexmem' has no attribute {name!r}")


def __dir__() -> list[str]:
    _load()
    return sorted(set(globals()) | set(__all__))
