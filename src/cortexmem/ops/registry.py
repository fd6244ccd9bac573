"""Explicit per-op backend registry: each op lists its implementations with the devices and dtypes they support.

``select_backend(op, requested, device=..., dtype=...)`` picks the highest-priority backend that can run, or fails
loudly when an explicitly requested one cannot. ``CORTEX_FORCE_PYTORCH=1`` or ``CORTEX_DISABLE_TRITON=1`` remove
every Triton backend from consideration. The choice is logged at DEBUG level and listed by ``cortex info``.

Inputs beyond a backend's shape limits (its ``supports`` constraint, described by ``limits``) make ``auto`` fall back
to the next backend that can take them, never a crash: each distinct fallback is logged once at DEBUG level and
kept in :func:`fallbacks`; ``cortex info`` lists every backend's limits and what ``auto`` falls back to. A backend
asked for by name that cannot take the shapes is a ``ValueError`` (at build time when the cell passes its shapes
to :func:`check_requested`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger("cortexmem.backends")


@dataclass(frozen=True)
class Backend:
    op: str
    name: str
    fn: Callable[..., Any]
    devices: frozenset[str] = frozenset({"cpu", "cuda"})
    dtypes: frozenset[torch.dtype] = frozenset({torch.float32, torch.float64, torch.bfloat16, torch.float16})
    priority: int = 0
    needs_triton: bool = False
    forward_only: bool = False  # no autograd: callers (and ``cortex doctor``) run it without gradients
    opt_in: bool = False  # only when requested by name: "auto" never picks it (e.g. not yet measured on a GPU)
    note: str = ""
    supports: Callable[..., str | None] | None = field(default=None, compare=False)
    limits: str = ""  # ``supports`` in words, for ``cortex info`` (e.g. "Dk <= 128")

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run in this process at all (None when it can)."""
        if self.needs_triton:
            if triton_disabled():
                return "disabled by CORTEX_FORCE_PYTORCH/CORTEX_DISABLE_TRITON"
            if not triton_available():
                return "triton is not installed"
            if not torch.cuda.is_available():
                return "no CUDA device"
        return None

    def rejects(self, device: torch.device | str | None, dtype: torch.dtype | None, **shape: Any) -> str | None:
        """Why this backend cannot run these inputs (None when it can)."""
        reason = self.unavailable_reason()
        if reason:
            return reason
        if device is not None and torch.device(device).type not in self.devices:
            return f"device {torch.device(device).type} not in {sorted(self.devices)}"
        if dtype is not None and dtype not in self.dtypes:
            return f"dtype {dtype} not supported"
        return self.shape_reason(dtype=dtype, **shape)

    def shape_reason(self, **shape: Any) -> str | None:
        """Why this backend cannot take these shapes (None when it can, or when it has no shape limits); ``supports``
        also gets the inputs' ``dtype`` when the caller knows it (a limit may hold for some dtypes only)."""
        return None if self.supports is None else self.supports(**shape)


_BACKENDS: dict[str, dict[str, Backend]] = {}


def register_backend(op: str, name: str, fn: Callable[..., Any], **kwargs: Any) -> Backend:
    backend = Backend(op=op, name=name, fn=fn, **kwargs)
    _BACKENDS.setdefault(op, {})[name] = backend
    return backend


def _ensure_ops() -> None:
    """Register every built-in op: each package under ``cortexmem.ops`` registers its backends on import."""
    import pkgutil

    from .. import ops

    for info in pkgutil.iter_modules(ops.__path__):
        if info.ispkg:
            importlib.import_module(f"{ops.__name__}.{info.name}")


def backends_for(op: str) -> dict[str, Backend]:
    if op not in _BACKENDS:
        _ensure_ops()
    if op not in _BACKENDS:
        raise ValueError(f"unknown op {op!r}; ops with backends: {sorted(_BACKENDS)}")
    return dict(_BACKENDS[op])


def list_backends() -> dict[str, list[Backend]]:
    """``{op: [backends, highest priority first]}``."""
    _ensure_ops()
    return {op: sorted(b.values(), key=lambda b: -b.priority) for op, b in sorted(_BACKENDS.items())}


def triton_disabled() -> bool:
    return any(os.environ.get(v, "0") not in ("", "0") for v in ("CORTEX_FORCE_PYTORCH", "CORTEX_DISABLE_TRITON"))


# looked up once: the answer cannot change in a process, and torch.compile cannot trace find_spec
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    return _TRITON_INSTALLED


def check_requested(op: str, requested: str, **shape: Any) -> None:
    """Build-time check: ``requested`` names a known backend of ``op`` that can run in this process and, when the
    caller passes its ``shape`` keywords (those of the backend's ``supports``), can take those shapes."""
    if requested == "auto":
        return
    table = backends_for(op)
    if requested not in table:
        raise ValueError(f"{op}: unknown backend {requested!r}; choose 'auto' or one of {sorted(table)}")
    reason = table[requested].unavailable_reason()
    if reason:
        raise ValueError(f"{op}: backend {requested!r} was requested but cannot run here: {reason}")
    reason = table[requested].shape_reason(**shape) if shape else None
    if reason:
        raise ValueError(f"{op}: backend {requested!r} was requested but cannot take these shapes: {reason}")


_FALLBACKS: dict[tuple[str, str, str, str], int] = {}


def _note_fallback(op: str, skipped: str, reason: str, chosen: str) -> None:
    key = (op, skipped, reason, chosen)
    if key not in _FALLBACKS:
        log.debug("%s: backend %s cannot take these inputs (%s); falling back to %s", op, skipped, reason, chosen)
        _FALLBACKS[key] = 0
    _FALLBACKS[key] += 1


def fallbacks() -> list[dict[str, Any]]:
    """The fallbacks ``auto`` took in this process: a backend that runs here skipped for its shape limits."""
    return [{"op": op, "skipped": skipped, "reason": reason, "chosen": chosen, "calls": n}
            for (op, skipped, reason, chosen), n in _FALLBACKS.items()]


def fallback_target(op: str, backend: Backend, device: Any, dtype: torch.dtype | None) -> str | None:
    """The backend ``auto`` uses instead of ``backend`` for inputs beyond its shape limits (None if none can)."""
    for other in sorted(backends_for(op).values(), key=lambda b: -b.priority):
        if other.priority < backend.priority and not other.opt_in and other.rejects(device, dtype) is None:
            return other.name
    return None


def select_backend(op: str, requested: str = "auto", *, device: Any = None, dtype: torch.dtype | None = None,
                   **shape: Any) -> Backend:
    """The backend that runs ``op`` for these inputs: ``requested`` if it can, else the best that can (opt-in
    backends only when requested)."""
    table = backends_for(op)
    if requested != "auto":
        check_requested(op, requested)
        backend = table[requested]
        reason = backend.rejects(device, dtype, **shape)
        if reason:
            raise ValueError(f"{op}: backend {requested!r} cannot run these inputs: {reason}")
        return backend
    reasons, beyond_limits = {}, []
    for backend in sorted(table.values(), key=lambda b: -b.priority):
        if backend.opt_in:
            reasons[backend.name] = "opt-in: request it by name"
            continue
        reason = backend.rejects(device, dtype, **shape)
        if reason is None:
            if not torch.compiler.is_compiling():  # dynamo cannot trace logging calls
                log.debug("%s: using backend %s (device=%s, dtype=%s)", op, backend.name, device, dtype)
                for skipped, why in beyond_limits:
                    _note_fallback(op, skipped, why, backend.name)
            return backend
        reasons[backend.name] = reason
        if backend.rejects(device, dtype) is None:  # it runs here, only not these shapes: a fallback
            beyond_limits.append((backend.name, reason))
    raise ValueError(f"{op}: no backend can run device={device}, dtype={dtype}: {reasons}")


def describe_op(op: str, device: Any, dtype: torch.dtype = torch.float32) -> str:
    """One line for ``cortex info``: each backend with its limits and fallback, and what ``auto`` picks here."""
    parts = []
    for b in sorted(backends_for(op).values(), key=lambda b: -b.priority):
        text = b.name + (f" ({b.note})" if b.opt_in else "")
        if b.limits and b.opt_in:
            text += f" (limits: {b.limits}; beyond them a request by name is an error)"
        elif b.limits:
            target = fallback_target(op, b, device, dtype)
            text += f" (limits: {b.limits}; beyond them auto uses {target or 'nothing: an error'})"
        if b.unavailable_reason():
            text += f" (unavailable: {b.unavailable_reason()})"
        parts.append(text)
    try:
        chosen = select_backend(op, device=device, dtype=dtype).name
    except ValueError as e:
        chosen = f"none ({e})"
    return f"{', '.join(parts)}; chosen on {torch.device(device).type}: {chosen}"


@dataclass(frozen=True)
class Reference:
    """How ``cortex doctor`` checks an op: the naive reference and a maker of small random inputs."""

    fn: Callable[..., Any]
    make_inputs: Callable[[torch.device, torch.dtype], tuple]


_REFERENCES: dict[str, Reference] = {}


def register_reference(op: str, fn: Callable[..., Any],
                       make_inputs: Callable[[torch.device, torch.dtype], tuple]) -> None:
    _REFERENCES[op] = Reference(fn, make_inputs)


def references() -> dict[str, Reference]:
    _ensure_ops()
    return dict(_REFERENCES)
