"""Resolve ``--stack``: a named stack (:mod:`cortexmem.stacks.named`), a stack-config JSON file, or a pattern."""

from __future__ import annotations

import warnings
from pathlib import Path

from ..stacks import CortexStack, CortexStackConfig, build_cortex, build_cortex_auto_stack
from ..stacks.named import build_stack, list_stacks
from ..utils.io import CheckpointError, one_line, read_json, validate_config

#: the names ``cortex rl`` has always offered; ``--num-layers`` repeats their blocks (so does every built-in stack)
BUILTIN_STACKS: tuple[str, ...] = ("lstm_plain", "gru", "conv", "conv_lstm")
#: old ``cortex rl`` names whose meaning the shared named stacks changed: old name -> the stack it built
DEPRECATED_STACKS: dict[str, str] = {"lstm": "lstm_plain"}


def resolve_stack(spec: str, d_hidden: int, num_layers: int = 1) -> CortexStack:
    """Build the stack named by ``spec``, in this order: a named stack (``cortexmem.stacks.named``; the old
    ``lstm`` warns and builds ``lstm_plain``), a stack-config ``.json`` file, or a pattern for
    ``cortexmem.build_cortex_auto_stack``."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"--stack must be a non-empty string, got {spec!r}")
    if d_hidden < 1 or num_layers < 1:
        raise ValueError(f"d_hidden and num_layers must be >= 1, got {d_hidden} and {num_layers}")
    name = _named(spec)
    if name is not None:
        stack = build_stack(name, d_hidden, num_layers)
    elif Path(spec).suffix == ".json" or "/" in spec or "\\" in spec or Path(spec).exists():
        stack = _from_file(Path(spec))  # a path-like value is a stack file, never a pattern
    else:
        try:
            stack = build_cortex_auto_stack(d_hidden, num_layers, spec)
        except (ValueError, KeyError) as e:
            raise ValueError(
                f"unknown stack {spec!r}: not a named stack ({', '.join(list_stacks())}), a stack-config .json "
                f"file, or a valid pattern ({e})"
            ) from None
    if not isinstance(stack, CortexStack):
        raise TypeError(f"stack {spec!r} built a {type(stack).__name__}; the RL runner needs a recurrent CortexStack")
    return stack


def _named(spec: str) -> str | None:
    key = spec.replace("-", "_")
    if key.lower() in DEPRECATED_STACKS:
        new = DEPRECATED_STACKS[key.lower()]
        warnings.warn(
            f"--stack {spec}: in cortex rl, {spec!r} built {new!r} (PyTorch's LSTM init); pass --stack {new} to keep "
            f"it. {spec!r} will mean the shared named stack (forget-gate bias +2), as in cortex eval.",
            DeprecationWarning, stacklevel=3,
        )
        return new
    names = list_stacks()
    if key in names:
        return key
    # the original four rl names were case-insensitive; none of their upper-case spellings is a valid pattern
    return key.lower() if key.lower() in BUILTIN_STACKS else None


def _from_file(path: Path) -> CortexStack:
    meta = read_json(path, "--stack file")
    stack_cfg = validate_config(CortexStackConfig, meta.get("config", meta), path, "stack config")
    try:
        return build_cortex(stack_cfg)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"stack config in {path} cannot be built: {one_line(e)}") from None


def stack_config(spec: str, d_hidden: int, num_layers: int = 1) -> CortexStackConfig:
    """The (resolved) config of :func:`resolve_stack`."""
    return resolve_stack(spec, d_hidden, num_layers).config
