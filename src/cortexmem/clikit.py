"""What every ``cortex`` sub-command shares: one error style, one logging set-up, output-path checks.

Errors: usage errors (bad flags or values) end with ``error: <one line>`` and exit code 2, runtime failures
(a bad file, a missing extra) with ``error: <one line>`` and exit code 1; never a traceback unless
``CORTEX_DEBUG=1``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

try:  # newer typer vendors click as typer._click; older typer uses the click package
    from typer._click import core as _core
    from typer._click import exceptions as _exc
    from typer._click.utils import echo
except ImportError:  # pragma: no cover - older typer
    from click import core as _core
    from click import exceptions as _exc
    from click.utils import echo

Abort = typer.Abort
ClickException, UsageError = _exc.ClickException, _exc.UsageError
Command, Context, Parameter = _core.Command, _core.Context, _core.Parameter

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

#: optional packages and the extra that installs each
EXTRAS = {"faiss": "lm", "tokenizers": "lm", "transformers": "llm", "torchrl": "rl", "gymnasium": "rl",
          "matplotlib": "plot", "popgym": "popgym", "triton": "gpu", "accelerate": "llm"}

#: runtime failures reported as one line with exit code 1
USER_ERRORS = (ValueError, TypeError, OSError, KeyError, ImportError)


def usage_error(message: str) -> NoReturn:
    """Stop with ``error: <message>`` and exit code 2."""
    raise UsageError(message)


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def error_lines(err: BaseException) -> tuple[list[str], int]:
    """The ``error:`` lines and exit code for an exception that ended a command."""
    if isinstance(err, UsageError):
        msg = one_line(err.format_message())
        ctx = getattr(err, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None and "--help" not in msg else ""
        return [msg + hint], 2
    if isinstance(err, ClickException):
        return [one_line(err.format_message())], err.exit_code or 1
    if isinstance(err, Abort):
        return ["aborted"], 1
    if type(err).__name__ == "ValidationError" and hasattr(err, "errors"):
        from .utils.io import validation_message

        return [part for part in validation_message(err).split("; ")], 2
    if isinstance(err, ModuleNotFoundError) and not isinstance(err, _missing_extra_type()):
        top = (err.name or "").split(".")[0]
        if top in EXTRAS:
            return [f"this command needs the {top!r} package: pip install 'cortex-memory[{EXTRAS[top]}]'"], 1
    if isinstance(err, KeyError) and err.args:
        return [one_line(err.args[0])], 1
    return [one_line(err) or type(err).__name__], 1


def _missing_extra_type() -> type:
    from .utils.extras import MissingExtraError

    return MissingExtraError


def report(err: BaseException) -> int:
    """Print ``err`` as ``error:`` lines on stderr; the exit code."""
    lines, code = error_lines(err)
    for line in lines:
        echo(f"error: {line}", err=True)
    return code


def setup_logging(level: str = "INFO") -> None:
    """One rich handler on stderr for cortexmem and the libraries it drives; their own bars off when piped."""
    from rich.console import Console
    from rich.logging import RichHandler

    level = level.upper()
    if level not in LOG_LEVELS:
        usage_error(f"unknown --log-level {level!r}; valid: {', '.join(LOG_LEVELS)}")
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]", handlers=[handler], force=True)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", level.lower() if level != "DEBUG" else "info")
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("transformers", "torchrl", "httpx", "urllib3", "faiss", "faiss.loader"):
        logging.getLogger(name).setLevel(max(logging.getLevelName(level), logging.WARNING))


def check_output_file(path: str | os.PathLike | None, flag: str) -> None:
    """An output file path must not be a directory, and no parent of it may be a file (checked before work)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        usage_error(f"{flag} {p} is a directory, expected a file path")
    _check_parents(p, flag)


def check_output_dir(path: str | os.PathLike | None, flag: str, *, must_be_new: bool = False) -> None:
    """An output directory path must not be a file (or, with ``must_be_new``, must not exist at all)."""
    if path is None:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        usage_error(f"{flag} {p} is a file, expected a directory")
    if must_be_new and p.exists() and any(p.iterdir()):
        usage_error(f"{flag} {p} exists and is not empty")
    _check_parents(p, flag)


def _check_parents(p: Path, flag: str) -> None:
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                usage_error(f"{flag} {p}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                usage_error(f"{flag} {p}: cannot write into {parent}")
            return


def check_input_file(path: str | os.PathLike, flag: str) -> None:
    """An input file must exist, be a file and be non-empty (a usage error otherwise)."""
    p = Path(path)
    if not p.exists():
        usage_error(f"{flag} {p} not found")
    if p.is_dir():
        usage_error(f"{flag} {p} is a directory, expected a file")
    if p.stat().st_size == 0:
        usage_error(f"{flag} {p} is empty")


def log_level_callback(ctx: Context, param: Parameter, value: Any) -> Any:
    if value is not None and not ctx.resilient_parsing:
        setup_logging(str(value))
    return value
