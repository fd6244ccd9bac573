"""Operators: one folder per op, ``naive.py`` (the specification) beside its fast paths."""

from . import precompile as _precompile  # noqa: F401 - installs the first-call hook of MemoryModule
