"""Names that become file names (session ids, checkpoint names) can never escape their directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+=-]{0,199}$")


def safe_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is a plain file-name component: letters, digits and ``._@+=-``, at most 200 chars.

    Rejects path separators, ``..``, absolute paths, NUL bytes, empty strings and leading dots with ``ValueError``.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}")
    if not _SAFE.fullmatch(name) or ".." in name:
        raise ValueError(
            f"{what} must be 1-200 characters of letters, digits and '._@+=-', not starting with '.' and without "
            f"'..' or path separators; got {name!r}"
        )
    return name


def safe_join(root: str | os.PathLike, name: object, what: str = "name") -> Path:
    """``root / name`` for a :func:`safe_name`, checked to resolve inside ``root``."""
    root = Path(root).resolve()
    path = (root / safe_name(name, what)).resolve()
    if path.parent != root:
        raise ValueError(f"{what} {name!r} escapes {root}")
    return path
