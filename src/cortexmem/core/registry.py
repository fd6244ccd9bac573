"""Registries mapping config classes to the modules they build (cells, blocks), and cells to their pattern tokens."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .config import TaggedConfig, ensure_builtins


class Registry:
    """Maps a config class to the ``nn.Module`` class built from it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._by_config: dict[type, type[nn.Module]] = {}

    def register(self, config_type: type[TaggedConfig]) -> Callable[[type[nn.Module]], type[nn.Module]]:
        if not (isinstance(config_type, type) and issubclass(config_type, TaggedConfig)):
            raise TypeError(f"register_{self.kind} expects a config class, got {config_type!r}")

        def deco(module_cls: type[nn.Module]) -> type[nn.Module]:
            self._by_config[config_type] = module_cls
            module_cls.config_class = config_type
            return module_cls

        return deco

    def module_class(self, config: Any) -> type[nn.Module]:
        cls = self._by_config.get(type(config))
        if cls is None and ensure_builtins():
            cls = self._by_config.get(type(config))
        if cls is None:
            raise TypeError(
                f"cannot build {self.kind} from {type(config).__name__}; registered {self.kind} configs: "
                f"{sorted(c.__name__ for c in self._by_config)}"
            )
        return cls

    def names(self) -> list[str]:
        ensure_builtins()
        return sorted(m.__name__ for m in self._by_config.values())

    def config_types(self) -> dict[str, type[TaggedConfig]]:
        """``{module class name: config class}``, sorted by name."""
        ensure_builtins()
        return {m.__name__: c for c, m in sorted(self._by_config.items(), key=lambda kv: kv[1].__name__)}


CELLS = Registry("cell")
BLOCKS = Registry("block")


@dataclass(frozen=True)
class CellToken:
    """A pattern token declared with its cell: the block ``block(cell=config(**fields))``.

    ``block`` is the block config's class name: blocks sit above cells, so a cell names its block, never imports it.
    """

    config: type[TaggedConfig]
    block: str
    fields: Mapping[str, Any] = field(default_factory=dict)


_TOKENS: dict[str, CellToken] = {}
_CELL_NAMES: dict[str, str] = {}  # the cell's short name (named stacks, bench) -> its token
_SYMBOL = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def register_cell(config_type: type[TaggedConfig], *, token: str | None = None, block: str = "PassThroughBlockConfig",
                  axon: Mapping[str, Any] | None = None, name: str | None = None):
    """Class decorator: ``@register_cell(MyCellConfig, token="Y", block="PreUpBlockConfig", name="my_cell")``.

    ``token`` makes the cell a pattern symbol (``"Y"`` is ``block`` around the cell at its defaults); ``axon`` the
    cell fields of its ``"Y^"`` variant; ``name`` the cell's short name (a named stack of 2 blocks, a bench cell).
    """
    if token is not None:
        register_cell_token(config_type, token, block=block, axon=axon, name=name)
    return CELLS.register(config_type)


def register_cell_token(config_type: type[TaggedConfig], token: str, *, block: str = "PassThroughBlockConfig",
                        axon: Mapping[str, Any] | None = None, name: str | None = None) -> None:
    """Declare the pattern token ``token`` (and ``token^`` with ``axon``) of a cell; see :func:`register_cell`."""
    if not isinstance(token, str) or not _SYMBOL.match(token):
        raise ValueError(f"register_cell: token must be a letter then letters, digits or '_', got {token!r}")
    if name is not None and (not isinstance(name, str) or not _SYMBOL.match(name)):
        raise ValueError(f"register_cell: name must be an identifier, got {name!r}")
    unknown = sorted(set(axon or {}) - set(config_type.model_fields))
    if unknown:
        raise ValueError(f"register_cell: {config_type.__name__} has no fields {unknown} (axon variant of {token!r})")
    entries = {token: CellToken(config_type, block)}
    if axon is not None:
        entries[f"{token}^"] = CellToken(config_type, block, dict(axon))
    for symbol in entries:
        other = _TOKENS.get(symbol)
        if other is not None and other.config.__name__ != config_type.__name__:
            raise ValueError(f"token {symbol!r} is already declared by {other.config.__name__}")
    if name is not None and _CELL_NAMES.get(name, token) != token:
        raise ValueError(f"cell name {name!r} is already used by the token {_CELL_NAMES[name]!r}")
    _TOKENS.update(entries)
    if name is not None:
        _CELL_NAMES[name] = token


def cell_tokens() -> dict[str, CellToken]:
    """``{symbol: CellToken}`` of every registered cell that declared a token (``"M"``, ``"M^"``, ...)."""
    ensure_builtins()
    return dict(_TOKENS)


def cell_names() -> dict[str, str]:
    """``{short name: token}`` of the registered cells that declared one (``{"gated_delta": "D", ...}``)."""
    ensure_builtins()
    return dict(_CELL_NAMES)


def register_block(config_type: type[TaggedConfig]):
    """Class decorator: ``@register_block(MyBlockConfig) class MyBlock(MemoryBlock): ...``."""
    return BLOCKS.register(config_type)


def list_cells() -> list[str]:
    """Names of the registered cell classes."""
    return CELLS.names()


def list_blocks() -> list[str]:
    """Names of the registered block classes."""
    return BLOCKS.names()
