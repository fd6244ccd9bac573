"""Resolve ``--stack``: a built-in name, a registered eval stack, a pattern, or a stack-config JSON file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..blocks import PassThroughBlockConfig, PostUpGatedBlockConfig, PreUpBlockConfig
from ..cells import CausalConv1dCellConfig, GRUCellConfig, LSTMCellConfig
from ..core.io import CheckpointError, one_line, read_json, validate_config
from ..stacks import CortexStack, CortexStackConfig, build_cortex


def _lstm(d: int, layers: int) -> CortexStackConfig:
    return CortexStackConfig(d_hidden=d, blocks=[PassThroughBlockConfig(cell=LSTMCellConfig())] * layers)


def _gru(d: int, layers: int) -> CortexStackConfig:
    return CortexStackConfig(d_hidden=d, blocks=[PassThroughBlockConfig(cell=GRUCellConfig())] * layers)


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
    "gru": _gru,
    "conv": _conv,
    "conv_lstm": _conv_lstm,
}


def resolve_stack(spec: str, d_hidden: int, num_layers: int = 1) -> CortexStack:
    """Build the stack named by ``spec``, in this order: a built-in name (``lstm``, ``gru``, ``conv``, ``conv_lstm``), a
    stack-config ``.json`` file, a stack registered with ``cortexmem.evals`` (``num_layers`` must be 1: those
    builders fix their depth), or a pattern for ``cortexmem.build_cortex_auto_stack``."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"--stack must be a non-empty string, got {spec!r}")
    if d_hidden < 1 or num_layers < 1:
        raise ValueError(f"d_hidden and num_layers must be >= 1, got {d_hidden} and {num_layers}")
    key = spec.lower().replace("-", "_")
    if key in BUILTIN_STACKS:
        return build_cortex(BUILTIN_STACKS[key](d_hidden, num_layers))
    path = Path(spec)
    if path.suffix == ".json" or "/" in spec or "\\" in spec or path.exists():
        # a path-like value is a stack file, never a pattern
        meta = read_json(path, "--stack file")
        cfg = meta.get("config", meta)
        stack_cfg = validate_config(CortexStackConfig, cfg, path, "stack config")
        try:
            return build_cortex(stack_cfg)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"stack config in {path} cannot be built: {one_line(e)}") from None
    stack = _from_eval_registry(spec, d_hidden, num_layers)
    if stack is None:
        import cortexmem

        builder = getattr(cortexmem, "build_cortex_auto_stack", None)
        if builder is None:
            raise ValueError(
                f"unknown stack {spec!r}: expected one of {sorted(BUILTIN_STACKS)}, a stack-config .json file or "
                "a cortexmem.evals stack name; patterns need cortexmem.build_cortex_auto_stack, which this "
                "install does not have"
            )
        try:
            stack = builder(d_hidden, num_layers, spec)
        except (ValueError, KeyError) as e:
            raise ValueError(
                f"unknown stack {spec!r}: not a built-in or registered name, and not a valid pattern ({e})"
            ) from None
    if not isinstance(stack, CortexStack):
        raise TypeError(f"stack {spec!r} built a {type(stack).__name__}; the RL runner needs a recurrent CortexStack")
    return stack


def _from_eval_registry(spec: str, d_hidden: int, num_layers: int) -> CortexStack | None:
    try:
        from ..evals import stacks as registry
    except ImportError:
        return None
    if spec not in registry.list_stacks():
        return None
    if num_layers != 1:
        raise ValueError(
            f"stack {spec!r} comes from the cortexmem.evals registry, which fixes its depth; "
            f"got num_layers={num_layers}, expected 1"
        )
    return registry.build_stack(spec, d_hidden)


def stack_config(spec: str, d_hidden: int, num_layers: int = 1) -> CortexStackConfig:
    """The (resolved) config of :func:`resolve_stack`."""
    return resolve_stack(spec, d_hidden, num_layers).config
