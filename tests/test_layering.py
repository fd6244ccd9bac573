"""The tree's layering: ``utils → core → ops / runtime → cells → blocks → stacks → apps → cli``; a module imports
only from its left.

Read from the source with ``ast``: every ``import``/``from ... import`` (also inside functions) and every string
constant that names a ``cortexmem.<package>`` module (``importlib.import_module`` targets, lazy-import tables).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import cortexmem

ROOT = Path(cortexmem.__file__).parent
APPS = ("evals", "llm", "lm", "rl", "tools")
RANK = {"utils": 0, "core": 1, "clikit": 2, "ops": 2, "runtime": 2, "cells": 3, "blocks": 4, "stacks": 5,
        **dict.fromkeys(APPS, 6), "cli": 7, "__init__": 7, "__main__": 8}
#: (importer, imported) pairs that go against the order on purpose, with the reason
ALLOWED = {
    ("core", "cells"): "core.config.ensure_builtins imports the built-in packages so tags resolve under a lazy import",
    ("core", "blocks"): "the same bootstrap",
    ("core", "stacks"): "the same bootstrap",
}
_MODULE_NAME = re.compile(r"cortexmem(\.[A-Za-z_]\w*)+")


def _package(parts: tuple[str, ...]) -> str:
    return parts[0].removesuffix(".py")


def _targets(path: Path) -> list[tuple[int, str]]:
    """``(line, top-level cortexmem package)`` for every cortexmem module ``path`` imports or names."""
    rel = path.relative_to(ROOT).parts
    here = list(rel[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - node.level + 1]
            parts = base + (node.module.split(".") if node.module else [])
            found += [(node.lineno, p) for p in ([parts[0]] if parts else [a.name for a in node.names])]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "cortexmem":
            parts = node.module.split(".")[1:]
            found += [(node.lineno, p) for p in (parts[:1] or [a.name for a in node.names])]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("cortexmem.")]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.fullmatch(node.value):
            found.append((node.lineno, node.value.split(".")[1]))
    return [(line, p.removesuffix(".py")) for line, p in found]


def _violations() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        src = _package(path.relative_to(ROOT).parts)
        for line, tgt in _targets(path):
            if tgt == src or tgt not in RANK or (src, tgt) in ALLOWED:
                continue
            where = f"{path.relative_to(ROOT.parent)}:{line}: {src} imports {tgt}"
            if src in APPS and tgt in APPS:
                bad.append(f"{where} (one app imports another)")
            elif RANK[tgt] > RANK[src] or (RANK[tgt] == RANK[src] and src != tgt):
                bad.append(f"{where} (upward or sideways: {src} is layer {RANK[src]}, {tgt} layer {RANK[tgt]})")
    return bad


def test_every_package_has_a_layer():
    packages = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert packages <= set(RANK), f"give {sorted(packages - set(RANK))} a layer in RANK"


def test_imports_follow_the_layers():
    bad = _violations()
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    fake = tmp_path / "cortexmem"
    (fake / "rl").mkdir(parents=True)
    (fake / "ops").mkdir()
    (fake / "rl" / "x.py").write_text("def f():\n    from ..evals import stacks\n")
    (fake / "ops" / "y.py").write_text("import importlib\nimportlib.import_module('cortexmem.cells.lstm')\n")
    monkeypatch.setattr(f"{__name__}.ROOT", fake)
    bad = _violations()
    assert len(bad) == 2 and "one app imports another" in bad[1] and "upward" in bad[0]


def test_modules_moved_out_of_core_still_import_by_their_old_names_with_a_warning():
    import importlib
    import sys

    import pytest

    assert cortexmem.MOVED, "the alias table is empty"
    for old, new in cortexmem.MOVED.items():
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
            module = importlib.import_module(old)
        assert module is importlib.import_module(new), old
    from cortexmem.core import io  # noqa: F401 - the from-import form resolves through the alias too

    assert io is importlib.import_module("cortexmem.utils.io")


def test_core_holds_only_the_contract():
    assert sorted(p.stem for p in (ROOT / "core").glob("*.py")) == ["__init__", "config", "module", "registry"]
