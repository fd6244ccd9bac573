"""Operators: one folder per op, ``naive.py`` (the specification) beside its fast paths, named by one vocabulary:
``recurrent.py`` (torch paths that step or loop over time), ``chunk.py`` (chunked or whole-sequence parallel torch
paths), ``triton.py`` or ``triton_fwd.py`` + ``triton_bwd.py`` (Triton kernels). Each op's ``__init__.py`` registers
its backends and reference in :mod:`.registry` and exports the op's public functions."""

from . import precompile as _precompile  # noqa: F401 - installs the first-call hook of MemoryModule
