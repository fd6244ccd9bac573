"""Optional extras: one message, everywhere, for a package that an optional feature needs."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""


def require(module: str, extra: str, feature: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` with the ``pip install 'cortex-memory[extra]'`` line."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if getattr(e, "name", None) not in (None, top, module) and not str(getattr(e, "name", "")).startswith(top):
            raise  # the package is there but one of its own imports failed: show that error
        what = feature or module
        raise MissingExtraError(f"{what} needs the {top!r} package: pip install 'cortex-memory[{extra}]'") from None
