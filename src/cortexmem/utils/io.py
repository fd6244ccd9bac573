"""File I/O for every checkpoint: crash-safe writes (temp file, fsync, atomic rename, fsync of the directory) and
one checked reader (``read_json``, ``read_versioned``, ``load_safetensors_checked``) whose every failure is a
:class:`CheckpointError` with a one-line message naming the file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats (NaN, inf) as ``None``, in nested dicts, lists and tuples: strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, *, mode: int = 0o644) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", mode=mode)


def atomic_save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 110, **savefig_kwargs: Any) -> None:
    """A matplotlib figure as PNG, rendered in memory and written with :func:`atomic_write_bytes`."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **savefig_kwargs)
    atomic_write_bytes(path, buf.getvalue())


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None,
                            *, mode: int = 0o644) -> None:
    """Save a flat ``{name: tensor}`` dict as safetensors, atomically."""
    from safetensors.torch import save

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(contiguous, metadata=metadata), mode=mode)


def fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- the read side: one reader, one error type -------------------------------------------------------------


class CheckpointError(ValueError):
    """A file that cannot be read as what it should be; the message is one line naming the file and the fault."""


class CheckpointNotFoundError(FileNotFoundError, CheckpointError):
    """The file (or the checkpoint folder) is not there."""


def one_line(text: object) -> str:
    """``text`` squeezed onto one line (library messages can span several)."""
    return " ".join(str(text).split())


def check_file(path: str | os.PathLike, what: str = "file") -> int:
    """The size of the regular, non-empty file ``path``; missing, a directory or empty -> one line."""
    p = Path(path)
    if not p.exists():
        raise CheckpointNotFoundError(f"{what} {p} not found")
    if p.is_dir():
        raise CheckpointError(f"{what} {p} is a directory, expected a file")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise CheckpointError(f"{what} {p} cannot be read ({e.strerror or one_line(e)})") from None
    if size == 0:
        raise CheckpointError(f"{what} {p} is empty")
    return size


def read_bytes(path: str | os.PathLike, what: str = "file") -> bytes:
    """The bytes of ``path``; missing, a directory, unreadable or empty -> :class:`CheckpointError`."""
    p = Path(path)
    check_file(p, what)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{what} {p} cannot be read ({e.strerror or one_line(e)})") from None
    if not data:
        raise CheckpointError(f"{what} {p} is empty")
    return data


def read_json(path: str | os.PathLike, what: str = "JSON file", *, expect: type | None = dict) -> Any:
    """Parse ``path`` as UTF-8 JSON (an object unless ``expect`` says otherwise); any fault -> one line."""
    p = Path(path)
    data = read_bytes(p, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{what} {p} is corrupted: not UTF-8 text (bad byte at offset {e.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{what} {p} is corrupted: not valid JSON ({e.msg} at line {e.lineno} column "
                              f"{e.colno})") from None
    except RecursionError:
        raise CheckpointError(f"{what} {p} is corrupted: not valid JSON (nested too deeply)") from None
    if expect is not None and not isinstance(obj, expect):
        raise CheckpointError(f"{what} {p} must hold a JSON {_json_kind(expect)}, got {_json_kind(type(obj))}")
    return obj


def _json_kind(t: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(t, t.__name__)


def read_versioned(path: str | os.PathLike, *, format: str, version: Any, what: str = "checkpoint file",
                   required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object whose ``format`` and ``version`` match and which has every key in ``required``."""
    p = Path(path)
    meta = read_json(p, what)
    if meta.get("format") != format:
        raise CheckpointError(f"{p} is not a {what} (format {_short(meta.get('format'))}, expected {format!r})")
    if meta.get("version") != version:
        raise CheckpointError(f"{what} {p} has version {_short(meta.get('version'))}; this cortexmem reads "
                              f"version {version}")
    require_keys(meta, p, required, what)
    return meta


def require_keys(meta: dict[str, Any], path: str | os.PathLike, keys: tuple[str, ...] | list[str],
                 what: str = "checkpoint file") -> None:
    """Every key of ``keys`` must be in the JSON object ``meta`` read from ``path``."""
    missing = [k for k in keys if k not in meta]
    if missing:
        raise CheckpointError(f"{what} {path} lacks {', '.join(repr(k) for k in missing)}")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_message(err: Exception) -> str:
    """A pydantic ``ValidationError`` as ``field: message; field: message`` (no URLs); others as one line."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        try:
            items = errors(include_url=False)
        except TypeError:
            items = errors()
        parts = []
        for e in items:
            loc = ".".join(str(x) for x in e.get("loc", ())) or "value"
            parts.append(f"{loc}: {one_line(e.get('msg', ''))}")
        if parts:
            return "; ".join(parts)
    return one_line(err)


def validate_config(model: type, data: Any, path: str | os.PathLike, what: str = "config") -> Any:
    """``model.model_validate(data)`` whose failure names ``path`` in one line."""
    try:
        return model.model_validate(data)
    except (ValueError, TypeError) as e:  # pydantic's ValidationError is a ValueError
        raise CheckpointError(f"{what} in {path} is invalid: {validation_message(e)}") from None


def load_safetensors_checked(path: str | os.PathLike, *, what: str = "weights file", device: Any = "cpu",
                             expected: dict[str, Any] | None = None, numpy: bool = False,
                             data: bytes | None = None) -> dict[str, Any]:
    """``{name: tensor}`` from a safetensors file; unreadable, or names/shapes other than ``expected``'s
    (a ``{name: tensor or shape}`` dict, e.g. a ``state_dict()``) -> :class:`CheckpointError`."""
    p = Path(path)
    blob = read_bytes(p, what) if data is None else data
    try:
        if numpy:
            from safetensors.numpy import load
        else:
            from safetensors.torch import load
        tensors = load(blob)
    except Exception as e:  # safetensors raises SafetensorError (not a subclass of anything specific)
        raise CheckpointError(f"{what} {p} is corrupted: not a readable safetensors file ({one_line(e)})") from None
    if expected is not None:
        check_tensors(tensors, expected, p, what)
    if not numpy and str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors


def check_tensors(tensors: dict[str, Any], expected: dict[str, Any], path: str | os.PathLike,
                  what: str = "weights file") -> None:
    """Names and shapes of ``tensors`` must be those of ``expected`` (tensors or shapes)."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        parts = ([f"missing {_names(missing)}"] if missing else []) + ([f"unexpected {_names(extra)}"] if extra else [])
        raise CheckpointError(f"{what} {path} does not match the model: {'; '.join(parts)}")
    for name, ref in expected.items():
        want = tuple(getattr(ref, "shape", ref))
        got = tuple(tensors[name].shape)
        if got != want:
            raise CheckpointError(f"{what} {path}: tensor {name!r} has shape {list(got)}, the model needs {list(want)}")


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def safetensors_metadata(path: str | os.PathLike, what: str = "safetensors file") -> dict[str, str]:
    """The string metadata of a safetensors file's header (empty dict when none)."""
    p = Path(path)
    read_bytes(p, what)  # missing / directory / empty, with the file's name
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"{what} {p} is corrupted: not a readable safetensors file ({one_line(e)})") from None


def load_state_checked(module: Any, tensors: dict[str, Any], path: str | os.PathLike,
                       what: str = "weights file") -> None:
    """``module.load_state_dict(tensors)`` after checking that names and shapes match the module's."""
    check_tensors(tensors, module.state_dict(), path, what)
    try:
        module.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{what} {path} does not match the model ({one_line(e)[:200]})") from None


def load_weights_file(module: Any, path: str | os.PathLike, what: str = "weights file", *, data: bytes | None = None,
                      device: Any = "cpu") -> None:
    """Load the safetensors file ``path`` (or its bytes ``data``) into ``module``; any mismatch or corruption is
    one :class:`CheckpointError` naming the file."""
    load_state_checked(module, load_safetensors_checked(path, what=what, device=device, data=data), path, what)


def check_optimizer_state(opt: Any, state_dict: dict) -> None:
    """Every per-parameter state tensor that is not a scalar must have its parameter's shape."""
    params = [p for g in opt.param_groups for p in g["params"]]
    groups = state_dict["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(opt.param_groups):
        raise ValueError(f"{len(groups) if isinstance(groups, list) else groups!r} parameter groups, the optimizer "
                         f"has {len(opt.param_groups)}")
    for pid, st in state_dict["state"].items():
        if not 0 <= int(pid) < len(params):
            raise ValueError(f"state for parameter {pid}, the optimizer has {len(params)}")
        for key, v in st.items():
            if hasattr(v, "dim") and v.dim() > 0 and v.shape != params[int(pid)].shape:
                raise ValueError(f"optimizer state {pid}.{key} has shape {list(v.shape)}, the parameter "
                                 f"{list(params[int(pid)].shape)}")
