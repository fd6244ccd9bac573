"""Tagged pydantic v2 configs: every config serialises with a ``type`` tag and validates back to its class.

A field annotated with a base config type (``CellConfig``) accepts any registered subclass, and a dict
carrying ``{"type": "LSTMCellConfig", ...}`` validates to that subclass, so whole stack configs round-trip
through JSON.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializeAsAny, model_serializer, model_validator

_CONFIG_CLASSES: dict[str, type[TaggedConfig]] = {}


class TaggedConfig(BaseModel):
    """Base of every cortexmem config: strict fields, a ``type`` tag in serialised form."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        other = _CONFIG_CLASSES.get(cls.__name__)
        if other is not None and other.__qualname__ == cls.__qualname__ and other.__module__ != cls.__module__:
            # the tag is the class name, so two config classes must not share one
            raise TypeError(f"config class name {cls.__name__!r} is already used by {other.__module__}; "
                            f"config tags must be unique")
        _CONFIG_CLASSES[cls.__name__] = cls

    @model_validator(mode="wrap")
    @classmethod
    def _dispatch_on_tag(cls, value: Any, handler: Any) -> Any:
        if isinstance(value, dict) and "type" in value:
            tag = value["type"]
            target = _CONFIG_CLASSES.get(tag)
            if target is None and ensure_builtins():
                target = _CONFIG_CLASSES.get(tag)
            if target is None:
                raise ValueError(f"unknown config type {tag!r}; known: {sorted(_CONFIG_CLASSES)}")
            if not issubclass(target, cls):
                raise ValueError(f"config type {tag!r} is not a {cls.__name__}")
            rest = {k: v for k, v in value.items() if k != "type"}
            if target is not cls:
                return target.model_validate(rest)
            return handler(rest)
        return handler(value)

    @model_serializer(mode="wrap")
    def _add_tag(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {"type": type(self).__name__, **data}

    def explicit_fields(self) -> dict[str, Any]:
        """Deprecated (nothing in cortexmem used it): ``{k: getattr(cfg, k) for k in cfg.model_fields_set}``."""
        warnings.warn("TaggedConfig.explicit_fields() is deprecated; read model_fields_set instead",
                      DeprecationWarning, stacklevel=2)
        return {name: getattr(self, name) for name in self.model_fields_set}


def ensure_builtins() -> bool:
    """Import the built-in cells, blocks and stacks (``import cortexmem`` is lazy); True if that added any."""
    import importlib

    before = len(_CONFIG_CLASSES)
    for pkg in ("cortexmem.cells", "cortexmem.blocks", "cortexmem.stacks"):
        importlib.import_module(pkg)
    return len(_CONFIG_CLASSES) > before


def config_class(name: str) -> type[TaggedConfig]:
    """Look up a config class by its tag name."""
    if name not in _CONFIG_CLASSES:
        ensure_builtins()
    try:
        return _CONFIG_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown config type {name!r}; known: {sorted(_CONFIG_CLASSES)}") from None


def polymorphic(base: type) -> Any:
    """Annotation for a field holding any subclass of ``base`` (serialised with all its fields)."""
    return Annotated[SerializeAsAny[base], "polymorphic"]


__all__ = ["TaggedConfig", "config_class", "polymorphic", "ClassVar"]
