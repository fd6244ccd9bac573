"""``cortex rl bench``: a POPGym suite (envs x stacks x seeds at one frame budget), run as parallel jobs.

Each (env, stack, seed) run is one PPO training in its own process (envs on its CPU core, policy on the chosen
device). ``results.json`` is rewritten atomically after every finished run, so a batch cut off by a time limit
keeps what it finished; runs already in ``--out`` with the same settings are not run again. ``cortex rl report``
merges several batches into one MMER table (mean +- std over seeds), learning curves and one results file.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.io import atomic_save_figure, atomic_write_json, atomic_write_text, json_safe

log = logging.getLogger(__name__)

RESULTS_FORMAT = "cortexmem.rl.bench"

#: the default suite: POPGym envs at Easy and the ability each one tests
SUITE: dict[str, str] = {
    "RepeatFirstEasy": "recall",
    "RepeatPreviousEasy": "repetition",
    "AutoencodeEasy": "autoencoding",
    "CountRecallEasy": "counting",
    "PositionOnlyCartPoleEasy": "partially observed control",
    "NoisyPositionOnlyCartPoleEasy": "noisy control",
    "HigherLowerEasy": "game",
    "ConcentrationEasy": "game",
    "BattleshipEasy": "game",
    "MineSweeperEasy": "game",
}
#: baselines first, then cortex stacks: gated delta, a Column of GRU + gated delta experts, the AXMS Column
STACKS: tuple[str, ...] = ("lstm_plain", "gru", "D", "GD", "AXMS")
#: PPO settings of a bench run unless overridden (``--num-envs`` etc.)
DEFAULTS: dict[str, Any] = {
    "d_hidden": 64, "num_envs": 256, "rollout_len": 64, "bptt": 32, "epochs": 4, "minibatches": 8, "lr": 5e-4,
    "entropy_coeff": 0.01,
}


def _split(spec: str | Sequence[str], what: str, default: Sequence[str]) -> list[str]:
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    items = [s for s in items if s]
    if items in (["suite"], ["default"]):
        return list(default)
    if not items:
        raise ValueError(f"--{what} is empty; give a comma-separated list or 'suite'")
    dup = sorted({s for s in items if items.count(s) > 1})
    if dup:
        raise ValueError(f"--{what} lists {', '.join(dup)} more than once")
    return items


def plan(
    envs: str | Sequence[str], stacks: str | Sequence[str], seeds: int, frames: int, jobs: int, **ppo: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Validate everything before any run starts; ``(jobs [{env, stack, seed}], settings)``."""
    from .envs import check_env
    from .ppo import PPOConfig
    from .stacks import resolve_stack

    env_list = _split(envs, "envs", list(SUITE))
    stack_list = _split(stacks, "stacks", STACKS)
    if seeds < 1 or frames < 1 or jobs < 1:
        raise ValueError(f"--seeds, --frames and --jobs must be >= 1, got {seeds}, {frames} and {jobs}")
    settings = {**DEFAULTS, **{k: v for k, v in ppo.items() if v is not None}, "frames": frames}
    for env in env_list:
        check_env(env)
    for stack in stack_list:
        resolve_stack(stack, settings["d_hidden"])
    PPOConfig(env=env_list[0], stack=stack_list[0], **settings)  # surfaces bad PPO settings now
    todo = [{"env": e, "stack": s, "seed": k} for e in env_list for s in stack_list for k in range(seeds)]
    return todo, settings


def _run_dir(out: Path, job: dict[str, Any]) -> Path:
    return out / "runs" / job["env"] / job["stack"].replace("/", "_") / f"seed{job['seed']}"


def run_one(job: dict[str, Any], settings: dict[str, Any], out: str, plots: bool = True) -> dict[str, Any]:
    """Train one (env, stack, seed); returns its record (summary, curve). Runs in a worker process."""
    import torch

    from .ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(1)
    cfg = PPOConfig(env=job["env"], stack=job["stack"], seed=job["seed"], **settings)
    trainer = PPOTrainer(cfg, _run_dir(Path(out), job))
    summary = trainer.train(progress=False, plots=plots)
    curve = [[h["frames"], h["mean_return"]] for h in trainer.history]
    return {**job, **{k: summary[k] for k in ("mmer", "final_mean_return", "frames", "wall_seconds",
                                               "frames_per_second", "device", "params")}, "curve": curve}


def load_results(path: Path) -> dict[str, Any]:
    """A ``results.json`` written by :func:`run_bench` (JSON only), checked for format."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable bench results file ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT or not isinstance(data.get("runs"), list):
        raise ValueError(f"{path}: not a cortex rl bench results file (format {RESULTS_FORMAT!r} expected)")
    return data


def run_bench(
    envs: str | Sequence[str] = "suite",
    stacks: str | Sequence[str] = "suite",
    *,
    seeds: int = 3,
    frames: int = 1_000_000,
    jobs: int = 1,
    out: str | Path = "runs/rl_bench",
    max_minutes: float | None = None,
    plots: bool = True,
    **ppo: Any,
) -> dict[str, Any]:
    """Run the suite (or a subset), ``jobs`` runs at a time; writes ``results.json``, ``table.md``, ``curves.png``.

    ``plots=False`` writes no PNG (no matplotlib needed); ``cortex rl report`` draws the curves from the JSON later.
    """
    todo, settings = plan(envs, stacks, seeds, frames, jobs, **ppo)
    order = {(j["env"], j["stack"], j["seed"]): i for i, j in enumerate(todo)}
    out = Path(out)
    path = out / "results.json"
    done: list[dict[str, Any]] = []
    if path.is_file():
        old = load_results(path)
        if old.get("settings") == settings:
            keep = {(j["env"], j["stack"], j["seed"]) for j in todo}
            done = [r for r in old["runs"] if (r["env"], r["stack"], r["seed"]) in keep]
    finished = {(r["env"], r["stack"], r["seed"]) for r in done}
    todo = [j for j in todo if (j["env"], j["stack"], j["seed"]) not in finished]
    # slow stacks first so that the last jobs to start are short ones
    slow = {s: i for i, s in enumerate(reversed(STACKS))}
    todo.sort(key=lambda j: slow.get(j["stack"], -1))
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    skipped: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []

    def save() -> None:
        data = {"format": RESULTS_FORMAT, "settings": settings, "runs": done, "not_run": skipped, "failed": failed}
        atomic_write_json(path, json_safe(data))

    out.mkdir(parents=True, exist_ok=True)
    log.info("%d runs to do, %d already in %s", len(todo), len(done), path)
    if jobs == 1:
        for job in todo:
            if deadline is not None and time.monotonic() > deadline:
                skipped.append(job)
                continue
            done.append(run_one(job, settings, str(out), plots))
            save()
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            queue, running = list(todo), {}
            while queue or running:
                while queue and len(running) < jobs:
                    job = queue.pop(0)
                    if deadline is not None and time.monotonic() > deadline:
                        skipped.append(job)
                        continue
                    running[pool.submit(run_one, job, settings, str(out), plots)] = job
                if not running:
                    break
                finished_now, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished_now:
                    _collect(fut, running.pop(fut), done, failed)
                save()
    done.sort(key=lambda r: order[(r["env"], r["stack"], r["seed"])])
    save()
    report(done, out, plots=plots)
    return {"format": RESULTS_FORMAT, "settings": settings, "runs": done, "not_run": skipped, "failed": failed}


def _collect(fut: Future, job: dict[str, Any], done: list, failed: list) -> None:
    try:
        done.append(fut.result())
    except Exception as e:  # one failed run must not lose the batch; it is listed in results.json
        log.error("run %s failed: %s", job, e)
        failed.append({**job, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})


# --- report -------------------------------------------------------------------------------------------------
def aggregate(runs: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(env, stack): {mean, std, n, fps}}`` of MMER over seeds (population std)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["env"], r["stack"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        m = np.array([r["mmer"] for r in rs if r.get("mmer") is not None], dtype=float)
        fps = [r["frames_per_second"] for r in rs if r.get("frames_per_second")]
        out[key] = {
            "mean": float(m.mean()) if m.size else math.nan, "std": float(m.std()) if m.size else math.nan,
            "n": int(m.size), "fps": float(np.mean(fps)) if fps else math.nan,
            "frames": min(r["frames"] for r in rs),
        }
    return out


def table_markdown(runs: list[dict[str, Any]]) -> str:
    """MMER mean +- std per env and stack, the suite mean per stack, and mean frames/s per stack."""
    agg = aggregate(runs)
    envs = list(dict.fromkeys(r["env"] for r in runs))
    stacks = list(dict.fromkeys(r["stack"] for r in runs))
    head = "| env | " + " | ".join(stacks) + " |\n|---|" + "---|" * len(stacks) + "\n"
    rows = []
    for env in envs:
        cells = []
        best = max((agg[(env, s)]["mean"] for s in stacks if (env, s) in agg), default=math.nan)
        for s in stacks:
            a = agg.get((env, s))
            if a is None or a["n"] == 0:
                cells.append("" if a is None else "no finished episode")
                continue
            txt = f"{a['mean']:+.3f} ± {a['std']:.3f} (n={a['n']})"
            cells.append(f"**{txt}**" if a["mean"] == best else txt)
        rows.append(f"| {env} | " + " | ".join(cells) + " |")
    means, speeds = [], []
    for s in stacks:
        vals = [agg[(e, s)]["mean"] for e in envs if (e, s) in agg and agg[(e, s)]["n"]]
        full = len(vals) == len(envs)
        means.append(f"{np.mean(vals):+.3f}" + ("" if full else f" ({len(vals)}/{len(envs)} envs)") if vals else "")
        fps = [agg[(e, s)]["fps"] for e in envs if (e, s) in agg and not math.isnan(agg[(e, s)]["fps"])]
        speeds.append(f"{np.mean(fps):,.0f}" if fps else "")
    rows.append("| **mean over envs** | " + " | ".join(means) + " |")
    rows.append("| frames/s per run | " + " | ".join(speeds) + " |")
    return head + "\n".join(rows) + "\n"


def plot_curves(runs: list[dict[str, Any]], path: Path) -> None:
    """One panel per env: mean episodic return against frames, mean over seeds with a +-std band per stack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(r["env"] for r in runs))
    stacks = list(dict.fromkeys(r["stack"] for r in runs))
    cols = min(4, max(1, len(envs)))
    rows = math.ceil(len(envs) / cols) if envs else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, env in zip(axes.flat, envs, strict=False):
        for k, stack in enumerate(stacks):
            curves = [_xy(r["curve"]) for r in runs if r["env"] == env and r["stack"] == stack and r.get("curve")]
            curves = [c for c in curves if len(c[0])]
            if not curves:
                continue
            grid = np.unique(np.concatenate([x for x, _ in curves]))
            ys = np.stack([np.interp(grid, x, y) for x, y in curves])
            mean, std = ys.mean(0), ys.std(0)
            ax.plot(grid, mean, label=stack, color=f"C{k}")
            ax.fill_between(grid, mean - std, mean + std, color=f"C{k}", alpha=0.2)
        ax.set_title(env, fontsize=9)
        ax.set_xlabel("frames", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(envs):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    atomic_save_figure(fig, path)
    plt.close(fig)


def _xy(curve: list[list[float | None]]) -> tuple[np.ndarray, np.ndarray]:
    pts = [(f, y) for f, y in curve if y is not None]
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def report(runs: list[dict[str, Any]], out: Path, *, plots: bool = True) -> str:
    """Write ``table.md`` and (with ``plots``) ``curves.png`` for ``runs`` into ``out``; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    if not runs:
        atomic_write_text(out / "table.md", "no finished runs\n")
        return "no finished runs\n"
    table = table_markdown(runs)
    atomic_write_text(out / "table.md", table)
    if plots:
        plot_curves(runs, out / "curves.png")
    return table


def merge(paths: Sequence[Path], out: Path) -> dict[str, Any]:
    """Merge several ``results.json`` (same settings) into ``out``; a run present twice keeps the first copy."""
    if not paths:
        raise ValueError("cortex rl report needs at least one results.json (or a directory holding one)")
    files = [p / "results.json" if p.is_dir() else p for p in paths]
    datas = [load_results(f) for f in files]
    settings = datas[0]["settings"]
    for f, d in zip(files[1:], datas[1:], strict=True):
        if d["settings"] != settings:
            diff = sorted(k for k in set(settings) | set(d["settings"]) if settings.get(k) != d["settings"].get(k))
            raise ValueError(f"{f}: settings differ from {files[0]} in {', '.join(diff)}; runs are not comparable")
    runs, seen = [], set()
    for d in datas:
        for r in d["runs"]:
            key = (r["env"], r["stack"], r["seed"])
            if key not in seen:
                seen.add(key)
                runs.append(r)
    merged = {"format": RESULTS_FORMAT, "settings": settings, "runs": runs,
              "not_run": [j for d in datas for j in d.get("not_run", [])],
              "failed": [j for d in datas for j in d.get("failed", [])]}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", json_safe(merged))
    report(runs, out)
    return merged

