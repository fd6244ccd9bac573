"""The pattern language: token strings such as ``"AXMS"`` or ``"Y X^ Q"`` become columns and stacks.

A token names a block config. Built-in tokens are declared by their cells (``register_cell(cfg, token="D",
block="PreUpBlockConfig")``). Lookup order: the call's ``custom_map``, tokens from ``register_token``, built-ins,
then the ``cortexmem.tokens`` entry-point group (discovered on first use, each loaded only when its token is used).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import metadata
from typing import Any, TypeVar

from ..blocks.base import BlockConfig
from ..blocks.column import ColumnBlockConfig, RouterConfig
from ..core.config import TaggedConfig, config_class
from ..core.registry import CellToken, cell_tokens
from .stack import CortexStack, CortexStackConfig, build_cortex

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "cortexmem.tokens"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*\^?$")
_FORBIDDEN_OVERRIDES = ("hidden_size", "d_hidden")

TokenSpec = BlockConfig | Callable[[], BlockConfig]
F = TypeVar("F")


class _BuiltinTokens(Mapping[str, CellToken]):
    """The tokens the registered cells declared (``register_cell(cfg, token="D", ...)``), read live."""

    def __getitem__(self, symbol: str) -> CellToken:
        return cell_tokens()[symbol]

    def __iter__(self) -> Iterator[str]:
        return iter(cell_tokens())

    def __len__(self) -> int:
        return len(cell_tokens())


#: ``{symbol: CellToken}``: the built-in tokens, declared by the cells themselves
BUILTIN_TOKENS: Mapping[str, CellToken] = _BuiltinTokens()


def _make_builtin(symbol: str, token: CellToken) -> BlockConfig:
    try:
        cell = token.config(**token.fields)
    except ValueError as e:
        what = f"{token.config.__name__}(**{dict(token.fields)})"
        raise ValueError(f"token {symbol!r}: cannot build {what}: {e}") from None
    return config_class(token.block)(cell=cell)


_REGISTERED: dict[str, TokenSpec] = {}
_ENTRY_POINTS: dict[str, metadata.EntryPoint] | None = None


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            "token names are a letter followed by letters, digits or '_', optionally ending in '^'; "
            f"got {name!r}"
        )
    return name


def _check_spec(name: str, spec: Any) -> TokenSpec:
    if isinstance(spec, BlockConfig) or callable(spec):
        return spec
    raise TypeError(
        f"token {name!r} must map to a BlockConfig or a callable returning one, got {type(spec).__name__}"
    )


def register_token(name: str, spec: TokenSpec | None = None, *, overwrite: bool = False) -> Any:
    """Register a token globally: ``register_token("Y", cfg)`` or ``@register_token("Y")`` on a factory.

    ``spec`` is a ``BlockConfig`` (copied on each use) or a callable returning one (a ``BlockConfig``
    subclass whose fields all have defaults works). Register ``"Y^"`` for the axon variant of ``"Y"``.
    Replacing a built-in or registered token needs ``overwrite=True``.
    """
    _check_name(name)

    def deco(obj: F) -> F:
        _check_spec(name, obj)
        if not overwrite and (name in _REGISTERED or name in BUILTIN_TOKENS):
            raise ValueError(f"token {name!r} is already defined; pass overwrite=True to replace it")
        _REGISTERED[name] = obj
        return obj

    return deco if spec is None else deco(spec)


def unregister_token(name: str) -> None:
    """Remove a token added with :func:`register_token` (built-ins cannot be removed)."""
    if name not in _REGISTERED:
        raise ValueError(f"token {name!r} is not registered; registered: {sorted(_REGISTERED)}")
    del _REGISTERED[name]


def reload_token_entry_points() -> None:
    """Forget the discovered ``cortexmem.tokens`` entry points; the next lookup scans packages again."""
    global _ENTRY_POINTS
    _ENTRY_POINTS = None


def _entry_points() -> dict[str, metadata.EntryPoint]:
    global _ENTRY_POINTS
    if _ENTRY_POINTS is None:
        found: dict[str, metadata.EntryPoint] = {}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if not _NAME.match(ep.name):
                log.warning("ignoring %s entry point with invalid token name %r", ENTRY_POINT_GROUP, ep.name)
            elif ep.name in BUILTIN_TOKENS:
                log.warning("ignoring %s entry point %r: it would shadow a built-in",
                            ENTRY_POINT_GROUP, ep.name)
            else:
                found[ep.name] = ep
        _ENTRY_POINTS = found
    return _ENTRY_POINTS


def list_tokens(custom_map: Mapping[str, TokenSpec] | None = None) -> list[str]:
    """Every symbol the tokenizer knows (built-ins, registered, entry points, ``custom_map``), sorted."""
    return sorted({*BUILTIN_TOKENS, *_REGISTERED, *_entry_points(), *(custom_map or {})})


def _table(custom_map: Mapping[str, TokenSpec] | None) -> dict[str, Any]:
    if custom_map is not None and not isinstance(custom_map, Mapping):
        got = type(custom_map).__name__
        raise TypeError(f"custom_map must be a mapping of token -> BlockConfig, got {got}")
    table: dict[str, Any] = dict(_entry_points())
    table.update(BUILTIN_TOKENS)
    table.update(_REGISTERED)
    for name, spec in (custom_map or {}).items():
        table[_check_name(name)] = _check_spec(name, spec)
    return table


def tokenize(pattern: str, custom_map: Mapping[str, TokenSpec] | None = None) -> list[str]:
    """Split a layer pattern into symbols: whitespace separates, then greedy longest match (``Ag`` wins).

    ``^`` after a symbol selects its axon variant; it is an error on a symbol that has none.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"a pattern must be a str, got {type(pattern).__name__}")
    return _tokenize(pattern, _table(custom_map))


def _tokenize(pattern: str, table: Mapping[str, Any]) -> list[str]:
    names = sorted(table, key=len, reverse=True)
    out: list[str] = []
    for chunk in pattern.split():
        i = 0
        while i < len(chunk):
            match = next((n for n in names if chunk.startswith(n, i)), None)
            if match is None:
                raise ValueError(
                    f"pattern {pattern!r}: unknown token at {chunk[i:]!r}; known tokens: {sorted(table)} "
                    f"(separate multi-letter custom tokens with spaces)"
                )
            i += len(match)
            if i < len(chunk) and chunk[i] == "^":
                raise ValueError(f"pattern {pattern!r}: token {match!r} has no axon variant ('{match}^')")
            out.append(match)
    if not out:
        raise ValueError(f"pattern {pattern!r} holds no tokens")
    return out


def _make(symbol: str, spec: Any) -> BlockConfig:
    if isinstance(spec, CellToken):
        return _make_builtin(symbol, spec)
    if isinstance(spec, metadata.EntryPoint):
        try:
            spec = spec.load()
        except Exception as e:  # a broken third-party plugin: report which one
            raise ValueError(f"token {symbol!r}: cannot load entry point {spec.value!r} ({e})") from e
        spec = _check_spec(symbol, spec)
    if isinstance(spec, BlockConfig):
        return spec.model_copy(deep=True)
    cfg = spec()
    if not isinstance(cfg, BlockConfig):
        got = type(cfg).__name__
        raise TypeError(f"token {symbol!r}: its factory returned {got}, expected a BlockConfig")
    return cfg


def _layer_blocks(pattern: str, table: Mapping[str, Any]) -> list[BlockConfig]:
    if not isinstance(pattern, str):
        raise TypeError(f"a layer pattern must be a str, got {type(pattern).__name__}")
    return [_make(s, table[s]) for s in _tokenize(pattern, table)]


def build_column_auto_config(
    d_hidden: int, pattern: str, *, router: RouterConfig | None = None,
    custom_map: Mapping[str, TokenSpec] | None = None,
) -> ColumnBlockConfig:
    """A :class:`ColumnBlockConfig` with one expert per token of ``pattern`` (sizes left to infer)."""
    _check_d_hidden(d_hidden)
    if router is not None and not isinstance(router, RouterConfig):
        raise TypeError(f"router must be a RouterConfig, got {type(router).__name__}")
    experts = _layer_blocks(pattern, _table(custom_map))
    cfg = ColumnBlockConfig(experts=experts, router=router if router is not None else RouterConfig())
    cfg.resolve(d_hidden)  # surfaces size errors now, at the call that caused them
    return cfg


def build_cortex_auto_config(
    d_hidden: int, num_layers: int, pattern: str | list[str], *,
    custom_map: Mapping[str, TokenSpec] | None = None,
    override_global_configs: Iterable[TaggedConfig] | None = None, post_norm: bool = True,
) -> CortexStackConfig:
    """A stack config from a pattern: a str is repeated ``num_layers`` times, a list gives one per layer.

    A layer with one token is that block; a layer with several tokens is a :class:`ColumnBlockConfig`.
    """
    _check_d_hidden(d_hidden)
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
    if isinstance(pattern, str):
        layers = [pattern] * num_layers
    elif isinstance(pattern, list | tuple):
        layers = list(pattern)
        if len(layers) != num_layers:
            raise ValueError(
                f"pattern list has {len(layers)} layer patterns, expected num_layers={num_layers}"
            )
    else:
        raise TypeError(f"pattern must be a str or a list of str, got {type(pattern).__name__}")
    table = _table(custom_map)
    blocks: list[BlockConfig] = []
    for layer in layers:
        experts = _layer_blocks(layer, table)
        blocks.append(experts[0] if len(experts) == 1 else ColumnBlockConfig(experts=experts))
    cfg = CortexStackConfig(d_hidden=d_hidden, blocks=blocks, post_norm=post_norm)
    if override_global_configs is not None:
        cfg = apply_global_overrides(cfg, override_global_configs)
    cfg.resolve()  # surfaces size errors now
    return cfg


def build_cortex_auto_stack(
    d_hidden: int, num_layers: int, pattern: str | list[str], *,
    custom_map: Mapping[str, TokenSpec] | None = None,
    override_global_configs: Iterable[TaggedConfig] | None = None, post_norm: bool = True,
) -> CortexStack:
    """Build the stack of :func:`build_cortex_auto_config` (same arguments)."""
    return build_cortex(build_cortex_auto_config(
        d_hidden, num_layers, pattern, custom_map=custom_map,
        override_global_configs=override_global_configs, post_norm=post_norm,
    ))


C = TypeVar("C", bound=TaggedConfig)


def apply_global_overrides(config: C, overrides: Iterable[TaggedConfig]) -> C:
    """Merge each override into every config of its type (``isinstance``) anywhere in ``config``'s graph.

    Only the fields set explicitly on the override (``model_fields_set``) are merged; for a config with
    required fields, build the override with ``Cls.model_construct(field=value)``. ``hidden_size`` and
    ``d_hidden`` cannot be overridden. An override that matches nothing is an error.
    """
    if isinstance(overrides, TaggedConfig) or not isinstance(overrides, Iterable):
        raise TypeError(f"override_global_configs must be a list of configs, got {type(overrides).__name__}")
    for ov in overrides:
        if not isinstance(ov, TaggedConfig):
            raise TypeError(f"each global override must be a config instance, got {type(ov).__name__}")
        fields = {k: getattr(ov, k) for k in ov.model_fields_set}
        bad = [k for k in _FORBIDDEN_OVERRIDES if k in fields]
        if bad:
            raise ValueError(
                f"{type(ov).__name__} override sets {bad}: sizes come from d_hidden and the blocks, "
                "they cannot be overridden globally"
            )
        if not fields:
            raise ValueError(f"{type(ov).__name__} override sets no field explicitly; nothing to merge")
        hits = [0]
        config = _merge(config, type(ov), fields, hits)
        if hits[0] == 0:
            what = f"{type(ov).__name__}({fields})"
            raise ValueError(f"override {what} matches no config in the generated graph")
    return config


def _merge(node: Any, target: type, fields: dict[str, Any], hits: list[int]) -> Any:
    if isinstance(node, list | tuple):
        items = [_merge(v, target, fields, hits) for v in node]
        return node if all(a is b for a, b in zip(items, node, strict=True)) else type(node)(items)
    if isinstance(node, dict):
        items = {k: _merge(v, target, fields, hits) for k, v in node.items()}
        return node if all(items[k] is v for k, v in node.items()) else items
    if not isinstance(node, TaggedConfig):
        return node
    children = {k: _merge(getattr(node, k), target, fields, hits) for k in type(node).model_fields}
    changed = {k: v for k, v in children.items() if v is not getattr(node, k)}
    if not isinstance(node, target) and not changed:
        return node
    data = {k: children[k] for k in node.model_fields_set | changed.keys()}
    if isinstance(node, target):
        hits[0] += 1
        data.update(copy.deepcopy(fields))
    try:
        return type(node).model_validate(data)
    except ValueError as e:
        what = f"global override of {target.__name__} made {type(node).__name__} invalid"
        raise ValueError(f"{what}: {e}") from None


def _check_d_hidden(d_hidden: Any) -> None:
    if not isinstance(d_hidden, int) or isinstance(d_hidden, bool) or d_hidden < 1:
        raise ValueError(f"d_hidden must be an int >= 1, got {d_hidden!r}")
