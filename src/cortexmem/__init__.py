"""cortex-memory: recurrent memory that updates in constant time, for agents and language models.

``import cortexmem`` is cheap: the cells, blocks and stacks (and torch) are imported on first use of any public
name, so ``cortex --help`` and tools that only need ``cortexmem.utils.io`` start fast.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

__version__ = "0.1.0"

#: the public names that are not the cells', blocks' or stacks' own ``__all__``: name -> module
_CORE_NAMES = {
    "TaggedConfig": ".core.config", "config_class": ".core.config",
    "NonFiniteError": ".runtime.finite", "enable_finite_check": ".runtime.finite",
    "GraphedModule": ".runtime.graphed", "MemoryModule": ".core.module",
    "safe_join": ".utils.paths", "safe_name": ".utils.paths",
    "list_blocks": ".core.registry", "list_cells": ".core.registry",
    "register_block": ".core.registry", "register_cell": ".core.registry",
    "StepRunner": ".runtime.step_runner",
}
_PACKAGES = (".cells", ".blocks", ".stacks")
_SUBMODULES = {"blocks", "cells", "core", "stacks", "ops", "runtime", "utils", "evals", "llm", "lm", "rl", "tools",
               "clikit", "cli"}
_loaded = False

#: modules moved out of ``cortexmem.core`` (which now holds only the contract): old name -> new name. The old
#: names still import, with a DeprecationWarning, until 0.3.
MOVED = {
    **{f"cortexmem.core.{m}": f"cortexmem.utils.{m}" for m in ("io", "paths", "schedule", "progress", "extras")},
    **{f"cortexmem.core.{m}": f"cortexmem.runtime.{m}" for m in ("graphed", "step_runner", "finite")},
    "cortexmem.core.backends": "cortexmem.ops.registry", "cortexmem.core.precompile": "cortexmem.ops.precompile",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name of :data:`MOVED` as its new module (the same object), with a warning."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        name = module.__name__
        warnings.warn(f"{name} moved to {MOVED[name]}; import it from there", DeprecationWarning, stacklevel=2)
        sys.modules[name] = importlib.import_module(MOVED[name])  # the import statement returns this module


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())


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
