"""``cortex bench``: timings of our cells and stacks against peers measured in the same process.

Peers: ``torch.nn.LSTM`` (cuDNN on GPU), the peer library ``cortexcore`` (import name ``cortex``), fla's
``chunk_gated_delta_rule`` and causal ``scaled_dot_product_attention``, each reported as "not installed" or
"failed: reason" when it cannot run. :mod:`.bench_goals` turns the rows into the speed goals, met or not.
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.registry import cell_names
from ..runtime.graphed import GraphedModule
from ..runtime.precision import TF32_MODES, tf32_mode  # noqa: F401 - cortex bench's --tf32 choices
from ..runtime.step_runner import StepRunner
from ..stacks import build_cortex_auto_stack
from ..utils.io import atomic_save_figure

#: bench cell name -> pattern token, as the cells declared them (``register_cell(cfg, token="D", name="gated_delta")``)
CELL_TOKENS: dict[str, str] = cell_names()


@dataclass
class BenchRow:
    name: str
    kind: str  # "ours" or "peer"
    fwd_bwd_ms: float | None = None
    fwd_bwd_graph_ms: float | None = None  # forward+backward replayed from CUDA graphs (GraphedModule)
    step_ms: float | None = None
    step_graph_ms: float | None = None
    step_graph_compiled_ms: float | None = None  # StepRunner(compile=True): torch.compile, then a CUDA graph
    first_call_s: float | None = None
    peak_mem_mb: float | None = None
    status: str = "ok"
    extra: dict[str, Any] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in ms (synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _warm_up(device: torch.device, seconds: float = 1.5) -> None:
    """Busy the GPU before the first timing: clocks ramp up under load, and the first row would pay for it."""
    if device.type != "cuda":
        return
    a = torch.randn(2048, 2048, device=device)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            a = torch.tanh(a @ a * 1e-3)
        _sync(device)


def _stack_for(cell: str, d: int, layers: int):
    return build_cortex_auto_stack(d, layers, CELL_TOKENS.get(cell, cell))


def _measure_module(name: str, kind: str, build: Callable[[], nn.Module], *, batch: int, seq: int, d: int,
                    device: torch.device, repeats: int, step_api: str = "cortex",
                    step_compile: str = "off", light: bool = False) -> BenchRow:
    """First call, eager forward+backward, peak memory; unless ``light``, the step and the CUDA-graph timings too."""
    row = BenchRow(name, kind)
    try:
        t0 = time.perf_counter()
        module = build().to(device)
        x = torch.randn(batch, seq, d, device=device)

        def fwd_bwd():
            module.zero_grad(set_to_none=True)
            y = module(x)[0]
            y.float().square().mean().backward()

        fwd_bwd()
        _sync(device)
        row.first_call_s = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        row.fwd_bwd_ms = time_call(fwd_bwd, device, repeats)
        if device.type == "cuda":
            row.peak_mem_mb = torch.cuda.max_memory_allocated(device) / 2**20
        if light:
            return row
        xs = torch.randn(batch, d, device=device)
        with torch.no_grad():
            if step_api == "lstm":
                hc = None

                def one_step():
                    nonlocal hc
                    _, hc = module(xs[:, None], hc)
            else:
                state = module.init_state(batch, device=device, dtype=torch.float32)

                def one_step():
                    nonlocal state
                    _, state = module.step(xs, state)
            row.step_ms = time_call(one_step, device, max(20, repeats))
        if step_api == "cortex" and device.type == "cuda" and hasattr(module, "forward_sequence"):
            try:
                graphed = GraphedModule(module, batch, seq, device=device)

                def graph_fwd_bwd():
                    module.zero_grad(set_to_none=False)
                    graphed(x)[0].square().mean().backward()

                row.fwd_bwd_graph_ms = time_call(graph_fwd_bwd, device, repeats)
                del graphed
            except RuntimeError as e:
                row.extra["fwd_bwd_graph"] = f"failed: {e}"[:200]
            try:
                runner = StepRunner(module, batch, device)
                row.step_graph_ms = time_call(lambda: runner.step(xs), device, max(50, repeats))
            except RuntimeError as e:
                row.extra["step_graph"] = f"failed: {e}"[:200]
            if step_compile != "off":
                try:
                    t1 = time.perf_counter()
                    runner = StepRunner(module, batch, device, compile=step_compile)
                    row.extra["step_compile_s"] = round(time.perf_counter() - t1, 1)
                    row.extra["step_compile_mode"] = step_compile
                    row.step_graph_compiled_ms = time_call(lambda: runner.step(xs), device, max(50, repeats))
                except Exception as e:  # noqa: BLE001 - compile failures are reported, not fatal
                    row.extra["step_graph_compiled"] = f"failed: {type(e).__name__}: {e}"[:200]
    except Exception as e:  # noqa: BLE001 - a benchmark reports every failure and goes on
        row.status = f"failed: {type(e).__name__}: {e}"[:300]
    return row


def _bare_lstm(d: int, layers: int) -> nn.Module:
    from ..cells.lstm import LSTMCell, LSTMCellConfig

    return LSTMCell(LSTMCellConfig(hidden_size=d, num_layers=layers))


class _CudnnLSTM(nn.Module):
    def __init__(self, d: int, layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d, d, num_layers=layers, batch_first=True)

    def forward(self, x, hc=None):
        return self.lstm(x, hc)


def _peer_cortexcore(pattern: str, layers: int, d: int):
    try:
        builder = importlib.import_module("cortex.stacks").build_cortex_auto_stack
    except Exception as e:  # noqa: BLE001
        return None, f"not installed ({type(e).__name__})"
    return (lambda: builder(d_hidden=d, num_layers=layers, pattern=pattern, compile_blocks=False)), None


STEP_COMPILE_MODES = ("off", "default", "max-autotune")


def check_cells(cells: list[str]) -> list[str]:
    """``cells`` without repeats, or a ``ValueError`` naming the first unknown one and the valid names."""
    unknown = [c for c in cells if c not in CELL_TOKENS]
    if unknown:
        raise ValueError(f"unknown cell {unknown[0]!r}; valid cells: {', '.join(CELL_TOKENS)}")
    if not cells:
        raise ValueError(f"no cells given; valid cells: {', '.join(CELL_TOKENS)}")
    return list(dict.fromkeys(cells))


def run_bench(cells: list[str], *, batch: int = 32, seq: int = 256, d: int = 256, layers: int = 4,
              pattern: str = "AXMS", device: str = "auto", repeats: int = 10,
              gated_delta_shapes: bool = True, step_compile: str = "default", goals_only: bool = False,
              first_call: bool | None = None) -> list[BenchRow]:
    """All measurements of one run (ours first, then peers), at the fp32 precision in force (:func:`tf32_mode`).

    ``step_compile``: the stack's compiled step (CUDA only): ``off``, ``default`` or ``max-autotune``
    (:class:`StepRunner`'s ``compile``). ``goals_only``: just the rows :func:`.bench_goals.evaluate_goals` reads
    (cells and their peers eager forward+backward only; no bare LSTMs, no 1-layer cuDNN, no cortexcore stack).
    ``first_call``: time the stack's first call in a fresh process with an empty Triton cache (default: on CUDA,
    where the Triton compiles it measures happen).
    """
    if step_compile not in STEP_COMPILE_MODES:
        raise ValueError(f"step_compile must be one of {', '.join(STEP_COMPILE_MODES)}, got {step_compile!r}")
    cells = check_cells(cells)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    kw = dict(batch=batch, seq=seq, d=d, device=dev, repeats=repeats)
    _warm_up(dev)
    rows = [_measure_module(f"cell:{c}", "ours", lambda c=c: _stack_for(c, d, 1), light=goals_only, **kw)
            for c in cells]
    rows.append(_measure_module(f"stack:{layers}x{pattern}", "ours", lambda: _stack_for(pattern, d, layers),
                                step_compile=step_compile if dev.type == "cuda" else "off", **kw))
    if not goals_only:
        rows.append(_measure_module(f"stack:{layers}xL (cortex LSTM)", "ours", lambda: _stack_for("L", d, layers),
                                    **kw))
        # the bare cell (no block around it: no norm, FFN or residual), the like-for-like match of nn.LSTM
        rows.append(_measure_module("bare:lstm-1", "ours", lambda: _bare_lstm(d, 1), **kw))
        if layers != 1:
            rows.append(_measure_module(f"bare:lstm-{layers}", "ours", lambda: _bare_lstm(d, layers), **kw))
    rows.append(_measure_module(f"peer:cudnn-lstm-{layers}", "peer", lambda: _CudnnLSTM(d, layers), step_api="lstm",
                                light=goals_only, **kw))
    if not goals_only and layers != 1:
        rows.append(_measure_module("peer:cudnn-lstm-1", "peer", lambda: _CudnnLSTM(d, 1), step_api="lstm", **kw))
    if not goals_only:
        build, why = _peer_cortexcore(pattern, layers, d)
        rows.append(BenchRow(f"peer:cortexcore-{layers}x{pattern}", "peer", status=why) if build is None else
                    _measure_module(f"peer:cortexcore-{layers}x{pattern}", "peer", build, **kw))
    for c in cells:
        tok = CELL_TOKENS.get(c, c)
        build, why = _peer_cortexcore(tok, 1, d)
        name = f"peer:cortexcore-cell:{c}"
        try:
            build and build()
        except Exception as e:  # noqa: BLE001 - other failures are measured (and reported) as the row's
            if "unknown token" in str(e).lower():  # its pattern language has no such cell: no peer, not a failure
                build, why = None, f"cortexcore has no {c} cell"
        rows.append(BenchRow(name, "peer", status=why) if build is None else
                    _measure_module(name, "peer", build, light=goals_only, **kw))
    if gated_delta_shapes and dev.type == "cuda":
        from .bench_delta import gated_delta_rows

        rows.extend(gated_delta_rows(dev, repeats))
    if first_call or (first_call is None and dev.type == "cuda"):
        rows.append(_first_call_row(pattern, layers, d, batch, seq, dev))
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise RuntimeError(f"bench rows must have unique names, got {names}")
    return rows


def _first_call_row(pattern: str, layers: int, d: int, batch: int, seq: int, dev: torch.device) -> BenchRow:
    """A fresh process, an empty Triton cache: build + first forward + backward of the stack."""
    from .first_call import first_call_fresh_process

    row = BenchRow(f"first-call:{layers}x{pattern}", "ours")
    try:
        res = first_call_fresh_process(pattern, layers, d, batch, seq, str(dev))
        row.first_call_s = res["total_s"]
        row.extra["build_s"] = round(res["build_s"], 3)
        row.extra["triton_cache"] = "empty"
    except Exception as e:  # noqa: BLE001 - a benchmark reports every failure and goes on
        row.status = f"failed: {type(e).__name__}: {e}"[:300]
    return row


def ratios(rows: list[BenchRow]) -> dict[str, float]:
    """Headline ratios (peer time / our time; > 1 means we are faster)."""
    by = {r.name: r for r in rows}
    out: dict[str, float] = {}

    def ratio(peer: str, ours: str, attr: str, ours_attr: str | None = None) -> None:
        p, o, oa = by.get(peer), by.get(ours), ours_attr or attr
        if p and o and getattr(p, attr) and getattr(o, oa):
            out[f"{peer} {attr} / {ours} {oa}"] = getattr(p, attr) / getattr(o, oa)

    for r in rows:
        if r.name.startswith("stack:") and "x" in r.name and "LSTM" not in r.name:
            pat = r.name.split(":", 1)[1]
            ratio(f"peer:cortexcore-{pat}", r.name, "fwd_bwd_ms")
            ratio(f"peer:cortexcore-{pat}", r.name, "fwd_bwd_ms", "fwd_bwd_graph_ms")
            ratio(f"peer:cortexcore-{pat}", r.name, "step_ms")
            ratio(f"peer:cortexcore-{pat}", r.name, "step_ms", "step_graph_ms")
            ratio(f"peer:cortexcore-{pat}", r.name, "step_ms", "step_graph_compiled_ms")
            for peer in [n for n in by if n.startswith("peer:cudnn-lstm-") and not n.endswith("-1")]:
                ratio(peer, r.name, "fwd_bwd_ms")
                ratio(peer, r.name, "fwd_bwd_ms", "fwd_bwd_graph_ms")
        if r.name.startswith("cell:"):
            ratio(f"peer:cortexcore-{r.name}", r.name, "fwd_bwd_ms")
            ratio(f"peer:cortexcore-{r.name}", r.name, "fwd_bwd_ms", "fwd_bwd_graph_ms")
    for r in rows:
        if r.name.startswith("bare:lstm-"):
            ratio(r.name.replace("bare:lstm", "peer:cudnn-lstm"), r.name, "fwd_bwd_ms")
            ratio(r.name.replace("bare:lstm", "peer:cudnn-lstm"), r.name, "step_ms")
    for r in rows:
        if r.name.startswith("gated_delta:ours") and r.extra.get("fwd_ms"):
            p = by.get(r.name.replace("ours", "fla"))
            if p and p.extra.get("fwd_ms"):
                out[f"{p.name} / {r.name} (fwd_ms)"] = p.extra["fwd_ms"] / r.extra["fwd_ms"]
    return out


def run_metadata(device: str = "auto") -> dict[str, Any]:
    """When and where a run was measured: date (UTC), GPU (or CPU), library versions."""
    import datetime
    import platform

    import cortexmem

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    try:
        triton = importlib.import_module("triton").__version__
    except Exception:  # noqa: BLE001
        triton = None
    cpu = f"CPU ({platform.processor() or platform.machine()})"
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu,
            "cortexmem": cortexmem.__version__, "torch": torch.__version__, "triton": triton,
            "cuda": torch.version.cuda, "python": platform.python_version()}


def rows_as_dicts(rows: list[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def plot(rows: list[BenchRow], path) -> bool:
    """A bar chart of forward+backward times; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    bars = [(r.name, r.fwd_bwd_ms, "tab:blue" if r.kind == "ours" else "tab:gray") for r in rows if r.fwd_bwd_ms]
    bars += [(f"{r.name} (CUDA graph)", r.fwd_bwd_graph_ms, "tab:cyan") for r in rows if r.fwd_bwd_graph_ms]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(bars) + 1.5))
    ax.barh([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    ax.set_xlabel("forward + backward (ms)")
    ax.invert_yaxis()
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)
    return True
