"""Resolve ``--stack``: a built-in name, a registered eval stack, a pattern, or a stack-config JSON file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..blocks import PassThroughBlockConfig, PostUpGatedBlockConfig, PreUpBlockConfig
from ..cells import CausalConv1dCellConfig, LSTMCellConfig
from ..stacks import CortexStack, CortexStackConfig, build_cortex


def _lstm(d: int, layers: int) -> CortexStackConfig:
    return CortexStackConfig(d_hidden=d, blocks=[PassThroughBlockConfig(cell=LSTMCellConfig())] * layers)


def _conv(d: int, layers: int) -> CortexStackConfig:
    cell = CausalConv1dCellConfig(kernel_size=4, activation="silu")
    return CortexStackConfig(d_hidden=d, blocks=[PreUpBlockConfig(cell=cell, proj_factor=2.0)] * layers)


def _conv_lstm(d: int, layers: int) -> CortexStackConfig:
    conv = PreUpBlockConfig(cell=CausalConv1dCellConfig(kernel_size=4, activation="silu"), proj_factor=2.0)
    lstm = PostUpGatedBlockConfig(cell=LSTMCellConfig())
    return CortexStackConfig(d_hidden=d, blocks=[conv, lstm] * layers)


#: name -> (d_hidden, num_layers) -> config; every name works without the optional builders on main
BUILTIN_STACKS: dict[str, Callable[[int, int], CortexStackConfig]] = {
    "lstm": _lstm,
    "conv": _conv,
    "conv_lstm": _conv_lstm,
}


def stack_config(spec: str, d_hidden: int, num_layers: int = 1) -> CortexStackConfig:
    """The stack config named by ``spec`` (built-in name, eval-registry name, JSON file, or pattern)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"--stack must be a non-empty string, got {spec!r}")
    if d_hidden < 1 or num_layers < 1:
        raise ValueError(f"d_hidden and num_layers must be >= 1, got {d_hidden} and {num_layers}")
    key = spec.lower().replace("-", "_")
    if key in BUILTIN_STACKS:
        return BUILTIN_STACKS[key](d_hidden, num_layers)
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        meta = json.loads(path.read_text(encoding="utf-8"))
        return CortexStackConfig.model_validate(meta.get("config", meta) if isinstance(meta, dict) else meta)
    registered = _from_eval_registry(spec, d_hidden, num_layers)
    if registered is not None:
        return registered
    import cortexmem

    builder = getattr(cortexmem, "build_cortex_auto_stack", None)
    if builder is None:
        raise ValueError(
            f"unknown stack {spec!r}: expected one of {sorted(BUILTIN_STACKS)} or a stack-config .json file; "
            "patterns need cortexmem.build_cortex_auto_stack, which this install does not have"
        )
    built = builder(d_hidden, num_layers, spec)
    return built.config if isinstance(built, CortexStack) else built


def _from_eval_registry(spec: str, d_hidden: int, num_layers: int) -> CortexStackConfig | None:
    try:
        from .. import evals
    except ImportError:
        return None
    lookup = getattr(evals, "stack_config", None) or getattr(evals, "get_stack_config", None)
    names = getattr(evals, "list_stacks", None)
    if lookup is None or names is None or spec not in names():
        return None
    return lookup(spec, d_hidden=d_hidden, num_layers=num_layers)


def build_stack(spec: str, d_hidden: int, num_layers: int = 1) -> CortexStack:
    """Build the stack named by ``spec`` (see :func:`stack_config`)."""
    return build_cortex(stack_config(spec, d_hidden, num_layers))
