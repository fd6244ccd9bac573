"""Registries mapping config classes to the modules they build (cells, blocks)."""

from __future__ import annotations

from collections.abc import Callable
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


def register_cell(config_type: type[TaggedConfig]):
    """Class decorator: ``@register_cell(MyCellConfig) class MyCell(MemoryCell): ...``."""
    return CELLS.register(config_type)


def register_block(config_type: type[TaggedConfig]):
    """Class decorator: ``@register_block(MyBlockConfig) class MyBlock(MemoryBlock): ...``."""
    return BLOCKS.register(config_type)


def list_cells() -> list[str]:
    """Names of the registered cell classes."""
    return CELLS.names()


def list_blocks() -> list[str]:
    """Names of the registered block classes."""
    return BLOCKS.names()
