"""The speed goals of ``cortex bench`` (issue 22's table), read from one run's rows: measured, ratio, met or not.

``ratio`` is oriented like the bench's ratios: above 1 is good. For a goal against a peer it is peer time / our
time; for a fixed budget it is budget / measured. A goal whose rows are missing or failed is ``skipped`` with the
reason (``passed`` is then ``None``), never counted as met.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .bench import BenchRow
from .bench_delta import GATED_DELTA_SHAPES, gated_delta_shape_name

STEP_BUDGET_MS = 0.5
STEP_COMPILE_BUDGET_S = 20.0
GATED_DELTA_SMALL_BUDGET_MS = 2.0
FIRST_CALL_BUDGET_S = 5.0


@dataclass
class Goal:
    figure: str
    goal: str
    measured: float | None = None
    unit: str = "ms"
    ratio: float | None = None
    passed: bool | None = None
    detail: str = ""

    @property
    def status(self) -> str:
        return "skipped" if self.passed is None else ("met" if self.passed else "NOT MET")


# where a row keeps the failure of a measurement that did not come back
_FAILURE_KEYS = {"fwd_bwd_graph_ms": "fwd_bwd_graph", "step_graph_compiled_ms": "step_graph_compiled",
                 "step_compile_s": "step_graph_compiled"}


def _why_missing(by: dict[str, BenchRow], name: str, attr: str, extra: bool = False) -> str | None:
    row = by.get(name)
    if row is None:
        return f"no row {name!r} in this run"
    if row.status != "ok":
        return f"{name}: {row.status}"
    value = row.extra.get(attr) if extra else getattr(row, attr)
    if value:
        return None
    failure = row.extra.get(_FAILURE_KEYS.get(attr, ""))
    return f"{name}: {attr} {failure}" if failure else f"{name}: {attr} not measured"


def _vs_peer(by, figure, goal, ours, ours_attr, peer, peer_attr, *, extra=False, detail="") -> Goal:
    """Met when our time <= the peer's (ratio peer / ours >= 1)."""
    g = Goal(figure, goal)
    why = _why_missing(by, ours, ours_attr, extra) or _why_missing(by, peer, peer_attr, extra)
    if why:
        g.detail = why
        return g
    get = (lambda r, a: by[r].extra[a]) if extra else (lambda r, a: getattr(by[r], a))
    mine, theirs = get(ours, ours_attr), get(peer, peer_attr)
    g.measured, g.ratio = mine, theirs / mine
    g.passed = g.ratio >= 1.0
    g.detail = f"peer {theirs:.3f} ms" + (f"; {detail}" if detail else "")
    return g


def _within(by, figure, goal, name, attr, budget, unit="ms", *, extra=False, strict=False) -> Goal:
    """Met when the measured value is within ``budget`` (below it when ``strict``)."""
    g = Goal(figure, goal, unit=unit)
    why = _why_missing(by, name, attr, extra)
    if why:
        g.detail = why
        return g
    value = by[name].extra[attr] if extra else getattr(by[name], attr)
    g.measured, g.ratio = value, budget / value
    g.passed = value < budget if strict else value <= budget
    return g


def evaluate_goals(rows: list[BenchRow], *, cells: list[str], batch: int, seq: int, d: int, layers: int,
                   pattern: str) -> list[Goal]:
    """Every goal of the issue's speed table, from the rows of one :func:`.bench.run_bench` run."""
    by = {r.name: r for r in rows}
    small, large = (gated_delta_shape_name(*s) for s in GATED_DELTA_SHAPES)
    no_gpu = not any(r.name.startswith("gated_delta:ours") for r in rows)
    goals = []
    goals.append(_vs_peer(by, f"gated delta fwd+bwd, bf16 {large}", "<= causal SDPA fwd+bwd, same shape, same run",
                          f"gated_delta:ours {large}", "fwd_bwd_ms", f"peer:sdpa-causal {large}", "fwd_bwd_ms"))
    goals.append(_within(by, f"gated delta fwd+bwd, bf16 {small}", f"<= {GATED_DELTA_SMALL_BUDGET_MS} ms",
                         f"gated_delta:ours {small}", "fwd_bwd_ms", GATED_DELTA_SMALL_BUDGET_MS))
    goals.append(_vs_peer(by, f"gated delta fwd, bf16 {large}", "<= 1.0x fla's time", f"gated_delta:ours {large}",
                          "fwd_ms", f"gated_delta:fla {large}", "fwd_ms", extra=True))
    stack, shape = f"stack:{layers}x{pattern}", f"B={batch} T={seq} d={d}"
    goals.append(_vs_peer(by, f"{layers} x {pattern!r} fwd+bwd (CUDA graph), {shape}",
                          f"<= 1.0x cuDNN {layers}-layer LSTM fwd+bwd", stack, "fwd_bwd_graph_ms",
                          f"peer:cudnn-lstm-{layers}", "fwd_bwd_ms"))
    goals.append(_within(by, f"{layers} x {pattern!r} step (compiled + CUDA graph), B={batch}",
                         f"<= {STEP_BUDGET_MS} ms", stack, "step_graph_compiled_ms", STEP_BUDGET_MS))
    goals.append(_within(by, f"{layers} x {pattern!r} step compile, B={batch}", f"<= {STEP_COMPILE_BUDGET_S:g} s",
                         stack, "step_compile_s", STEP_COMPILE_BUDGET_S, unit="s", extra=True))
    for c in cells:
        goals.append(_vs_peer(by, f"cell {c} eager fwd+bwd, {shape}", ">= 1.0x cortexcore (peer / ours)",
                              f"cell:{c}", "fwd_bwd_ms", f"peer:cortexcore-cell:{c}", "fwd_bwd_ms"))
    goals.append(_within(by, f"first call, {layers} x {pattern!r} fwd+bwd, empty Triton cache, fresh process",
                         f"< {FIRST_CALL_BUDGET_S:g} s", f"first-call:{layers}x{pattern}", "first_call_s",
                         FIRST_CALL_BUDGET_S, unit="s", strict=True))
    for goal in goals:
        if goal.passed is None and no_gpu and goal.figure.startswith("gated delta"):
            goal.detail = "needs CUDA (the gated-delta shapes run on a GPU only)"
        elif goal.passed is None and goal.detail.endswith("not measured") and ("graph" in goal.figure
                                                                                   or "compile" in goal.figure):
            goal.detail += " (CUDA graphs and the compiled step need a GPU)"
    return goals


def summary(goals: list[Goal]) -> str:
    """``"N met, M not met, K skipped"``."""
    met = sum(g.passed is True for g in goals)
    missed = sum(g.passed is False for g in goals)
    return f"goals: {met} met, {missed} not met, {len(goals) - met - missed} skipped"


def goals_as_dicts(goals: list[Goal]) -> list[dict]:
    return [{**asdict(g), "status": g.status} for g in goals]
