"""No pickle anywhere: scan the package source for unsafe loading and dynamic code execution."""

from __future__ import annotations

import ast
from pathlib import Path

import cortexmem

SRC = Path(cortexmem.__file__).parent


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            base = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            yield node, base, name


def test_no_pickle_eval_exec_or_unsafe_torch_load():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                if any(n.split(".")[0] in {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve"}
                       for n in names):
                    problems.append(f"{path}:{node.lineno} imports a pickle-like module")
        for node, base, name in _calls(tree):
            where = f"{path.relative_to(SRC)}:{node.lineno}"
            if name in {"eval", "exec"} and (isinstance(node.func, ast.Name) or base == "builtins"):
                problems.append(f"{where} calls {name}()")
            if base == "torch" and name == "load":
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    problems.append(f"{where} torch.load without weights_only=True")
            if base in {"np", "numpy"} and name == "load":
                kw = {k.arg: k.value for k in node.keywords}
                if isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is True:
                    problems.append(f"{where} numpy.load(allow_pickle=True)")
    assert not problems, "\n".join(problems)


def test_sql_is_parameterised():
    # every execute() call passes a literal SQL string (values go through placeholders, never f-strings / %)
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, _base, name in _calls(tree):
            if name in {"execute", "executemany", "executescript"} and node.args:
                sql = node.args[0]
                if isinstance(sql, ast.JoinedStr | ast.BinOp) or (
                        isinstance(sql, ast.Call) and getattr(sql.func, "attr", "") == "format"):
                    problems.append(f"{path.relative_to(SRC)}:{node.lineno} builds SQL dynamically")
    assert not problems, "\n".join(problems)
