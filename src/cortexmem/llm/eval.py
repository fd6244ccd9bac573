"""``eval_niah``: held-out accuracy over a (length x depth) grid, heatmap PNG, JSON, peak memory per length."""

from __future__ import annotations

import logging
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.io import atomic_save_figure, atomic_write_json
from .attach import MemoryLM
from .niah import NiahTask, needle_mask, stack_samples

log = logging.getLogger(__name__)


def parse_lengths(text: str) -> list[int]:
    """``"4k,32k,1M,300"`` -> ``[4096, 32768, 1048576, 300]``."""
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        if not p:
            continue
        mult = {"k": 1024, "m": 1024 * 1024}.get(p[-1], 1)
        num = p[:-1] if mult > 1 else p
        if not num.isdigit() or int(num) < 1:
            raise ValueError(f"bad length {part!r}: expected a positive integer with optional k/M suffix")
        out.append(int(num) * mult)
    if not out:
        raise ValueError(f"no lengths in {text!r}")
    return out


def parse_depths(text: str) -> list[float]:
    depths = [float(p) for p in text.split(",") if p.strip()]
    if not depths or any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must be a comma list of numbers in [0, 1], got {text!r}")
    return depths


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    # CPU: process high-water mark (monotone over the run; kB on Linux, bytes on macOS)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def eval_niah(mlm: MemoryLM, task: NiahTask, lengths: list[int], depths: list[float], *, samples: int = 20,
              batch_size: int = 4, seed: int = 1234, memory_mode: str = "carry",
              out_dir: str | Path | None = None) -> dict[str, Any]:
    """Exact-match accuracy per (length, depth) on held-out samples; writes ``niah.json`` + ``niah.png``."""
    acc = [[0.0] * len(depths) for _ in lengths]
    peak, tps = [], []
    gates = mlm.has_write_gates and memory_mode != "off"
    b_needle, b_rest = [], []
    was = mlm.training
    mlm.train(False)
    with torch.no_grad():
        for i, length in enumerate(lengths):
            _peak_reset(mlm.device)
            tokens, t0 = 0, time.perf_counter()
            # every (depth, sample) cell of this length, run in batches that may mix depths
            todo = [(j, s) for j in range(len(depths)) for s in range(samples)]
            hits = [0] * len(depths)
            g_sum = torch.zeros(2, dtype=torch.float64)
            g_cnt = torch.zeros(2, dtype=torch.float64)
            for start in range(0, len(todo), batch_size):
                part = todo[start:start + batch_size]
                samples_ = [task.sample(random.Random(seed * 7_919 + 1_000_003 * i + 1_009 * j + s), length,
                                        depths[j], "eval") for j, s in part]
                ids, labels = stack_samples(samples_)
                needle = needle_mask(ids, samples_) if gates else None
                out = mlm(ids, labels=labels, return_logits=False, memory_mode=memory_mode, write_mask=needle)
                for (j, _), ok in zip(part, out.exact_match.tolist(), strict=True):
                    hits[j] += int(ok)
                if needle is not None:
                    cnt = torch.tensor([needle.sum().item(), (~needle).sum().item()], dtype=torch.float64)
                    means = torch.stack([out.write_gate_mean, out.write_gate_mean_outside]).double().cpu()
                    g_sum += means * cnt
                    g_cnt += cnt
                tokens += ids.numel()
            if gates:
                b_needle.append(float(g_sum[0] / g_cnt[0].clamp(min=1)))
                b_rest.append(float(g_sum[1] / g_cnt[1].clamp(min=1)))
                log.info("length %d write gate b: needle %.4f, rest %.5f", length, b_needle[-1], b_rest[-1])
            for j, depth in enumerate(depths):
                acc[i][j] = hits[j] / samples
                log.info("length %d depth %.2f acc %.3f", length, depth, acc[i][j])
            tps.append(tokens / (time.perf_counter() - t0))
            peak.append(_peak_mb(mlm.device))
    mlm.train(was)
    result = {
        "lengths": lengths, "depths": depths, "accuracy": acc, "samples_per_cell": samples,
        "memory_mode": memory_mode, "chance": task.chance,
        "mean_accuracy_per_length": [sum(r) / len(r) for r in acc],
        "peak_memory_mb": peak, "peak_memory_kind": "cuda_max_allocated" if mlm.device.type == "cuda" else "cpu_maxrss",
        "tokens_per_s": tps, "chunk_size": mlm.config.chunk_size, "device": str(mlm.device),
    }
    if gates:
        # mean write strength b (over heads and memory layers) on the needle's tokens vs every other token
        result["write_gate_needle"] = b_needle
        result["write_gate_rest"] = b_rest
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / "niah.json", result)
        plot_heatmap(result, out / "niah.png")
    return result


def plot_heatmap(result: dict[str, Any], path: str | Path) -> None:
    """Accuracy heatmap: rows are depths, columns lengths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.array(result["accuracy"]).T
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(result["lengths"]), 1.0 + 0.6 * len(result["depths"])))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(result["lengths"])), [_fmt_len(n) for n in result["lengths"]])
    ax.set_yticks(range(len(result["depths"])), [f"{d:.2f}" for d in result["depths"]])
    ax.set(xlabel="context length (tokens)", ylabel="needle depth", title="NIAH exact match")
    for (r, c), v in np.ndenumerate(grid):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def _fmt_len(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def lm_loss_ratio(mlm: MemoryLM, texts: list[torch.Tensor]) -> dict[str, float]:
    """"No harm" figure: plain-text LM loss with memory attached over the base model's (same chunking)."""
    tot = {"carry": 0.0, "off": 0.0}
    cnt = {"carry": 0, "off": 0}
    with torch.no_grad():
        for ids in texts:
            ids = ids.unsqueeze(0) if ids.dim() == 1 else ids
            for mode in tot:
                out = mlm(ids, labels=ids, return_logits=False, memory_mode=mode)
                tot[mode] += float(out.loss) * out.num_label_tokens
                cnt[mode] += out.num_label_tokens
    with_mem, base = tot["carry"] / cnt["carry"], tot["off"] / cnt["off"]
    return {"loss_with_memory": with_mem, "loss_base": base, "ratio": with_mem / base}


def write_stats(mlm: MemoryLM, task: NiahTask, *, length: int, n: int = 8, seed: int = 77) -> dict[str, float]:
    """Where the memory writes: mean write strength ``b`` on needle tokens vs the rest, and the decay ``-log a``.

    A needle survives ``N`` filler tokens roughly when ``N * mean_decay << 1`` and the filler's summed write
    strength ``N * b_rest`` stays small against the key dimension (each write erases along its key).
    Measured through forward hooks on the gated-delta cells' gate projections (other cells: empty dict).
    """
    cells = [a.cell for a in mlm.memory.adapters.values() if hasattr(a.cell, "beta_proj")]
    if not cells:
        return {}
    rec: dict[str, list[Tensor]] = {"beta": [], "strength": [], "a": [], "ctx": []}
    hooks = []
    for adapter in mlm.memory.adapters.values():
        if getattr(adapter, "gate_ctx", None) is not None:
            hooks.append(adapter.gate_ctx.register_forward_hook(lambda m, i, o: rec["ctx"].append(o[0].detach())))
    for cell in cells:
        hooks.append(cell.beta_proj.register_forward_hook(lambda m, i, o: rec["beta"].append(o.detach())))
        hooks.append(cell.a_proj.register_forward_hook(lambda m, i, o: rec["a"].append(o.detach())))
        if getattr(cell, "strength", None) is not None:
            hooks.append(cell.strength.register_forward_hook(lambda m, i, o: rec["strength"].append(o.detach())))
    rng = random.Random(seed)
    ids, labels, samples = task.batch(rng, n, length, None, "eval")
    try:
        with torch.no_grad():
            mlm(ids, return_logits=False)
    finally:
        for h in hooks:
            h.remove()
    return _gate_summary(cells[0], rec, ids, samples)


@torch.no_grad()
def _gate_summary(cell: Any, rec: dict[str, list[Tensor]], ids: Tensor, samples: list[Any]) -> dict[str, float]:
    logit = torch.cat(rec["beta"], 1).float()[:, : ids.shape[1]]  # [B, T, NH] (first layer's cell when several)
    if rec["ctx"]:
        logit = logit + torch.cat(rec["ctx"], 1).float()[:, : ids.shape[1]]
    beta = torch.sigmoid(logit)
    if rec["strength"]:
        beta = beta * torch.sigmoid(torch.cat(rec["strength"], 1).float()[:, : ids.shape[1]])
    decay = -(cell.log_alpha_max - cell.A_log.exp().float() * F.softplus(
        torch.cat(rec["a"], 1).float()[:, : ids.shape[1]] + cell.dt_bias.float()))
    needle = needle_mask(ids, samples).to(beta.device)
    rest = ~needle
    return {
        "b_needle": float(beta[needle].mean()), "b_rest": float(beta[rest].mean()),
        "b_rest_p99": float(beta[rest].flatten().quantile(0.99)),
        "b_rest_sum_per_1k": float(beta[rest].mean() * 1000), "decay_mean": float(decay.mean()),
        "decay_max": float(decay.max()), "survival_128k": float(torch.exp(-decay.mean() * 131072)),
        "survival_1m": float(torch.exp(-decay.mean() * 1048576)),
    }

