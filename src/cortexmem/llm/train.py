"""``train_niah``: train only the sidecar on needle-in-a-haystack with BPTT through the memory across chunks.

The loss sits on the answer tokens after the last chunk, and gradient flows back through the memory state
into the chunk that *wrote* the needle (``bptt_chunks=None`` keeps the whole sequence; an int truncates).
Each chunk is activation-checkpointed so memory stays bounded by one chunk's activations plus the states.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..utils.io import (
    CheckpointError,
    atomic_save_figure,
    atomic_save_safetensors,
    atomic_write_json,
    check_optimizer_state,
    load_safetensors_checked,
    one_line,
    read_json,
    require_keys,
)
from ..utils.schedule import warmup_cosine
from .attach import MemoryLM
from .niah import NiahSample, NiahTask, needle_mask

log = logging.getLogger(__name__)


@dataclass
class TrainNiahConfig:
    """Hyper-parameters of ``train_niah``."""

    length: int = 2048
    steps: int = 1000
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup: int = 50
    grad_clip: float = 1.0
    bptt_chunks: int | None = None
    checkpoint: bool = True
    eval_every: int = 100
    eval_samples: int = 64
    save_every: int = 200
    seed: int = 0
    min_depth: float = 0.0
    max_depth: float = 1.0
    # weight of the next-token loss on the haystack text (memory attached): keeps the sidecar harmless to the
    # base model's language modelling ("no harm" figure); 0 trains on the answer alone
    lm_weight: float = 0.0
    # length curriculum: ramp the training length from min_length to length over curriculum_steps (rounded to
    # whole base-model chunks once past one chunk); short haystacks make the first retrievals easy to find
    min_length: int | None = None
    curriculum_steps: int = 0
    # stop early (checkpoint and adapter still written) after this many seconds of training
    time_limit_s: float | None = None
    # no-harm term on separate plain text instead of the haystack: lm_tokens tokens per step in rows of
    # lm_seq_len (default min(lm_tokens, 2 chunks)), memory carried along each row from a fresh state; the
    # haystack then has no LM targets, so every chunk before the question only advances the memory (cheap)
    lm_tokens: int = 0
    lm_seq_len: int | None = None
    # L1 penalty on the write strength b (mean over positions) on "filler" (everything but the needle and
    # distractor spans) or "all" positions: pushes b to zero where nothing needs storing
    write_l1: float = 0.0
    write_l1_on: str = "filler"
    # ramp the L1 weight linearly from 0 over this many steps: retrieval is learned with open gates first
    write_l1_warmup: int = 0

    def __post_init__(self) -> None:
        for name in ("length", "steps", "batch_size", "eval_every", "eval_samples", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_length is not None and not 1 <= self.min_length <= self.length:
            raise ValueError(f"min_length must be in [1, length={self.length}], got {self.min_length}")
        if self.curriculum_steps < 0:
            raise ValueError(f"curriculum_steps must be >= 0, got {self.curriculum_steps}")
        if self.lm_weight < 0:
            raise ValueError(f"lm_weight must be >= 0, got {self.lm_weight}")
        if isinstance(self.lm_tokens, bool) or not isinstance(self.lm_tokens, int) or self.lm_tokens < 0:
            raise ValueError(f"lm_tokens must be an integer >= 0, got {self.lm_tokens!r}")
        if self.lm_tokens and self.lm_weight == 0:
            raise ValueError("lm_tokens > 0 needs lm_weight > 0 (the weight of that LM loss)")
        if self.lm_seq_len is not None and (not isinstance(self.lm_seq_len, int) or self.lm_seq_len < 2):
            raise ValueError(f"lm_seq_len must be an integer >= 2 or None, got {self.lm_seq_len!r}")
        if not isinstance(self.write_l1, int | float) or not math.isfinite(self.write_l1) or self.write_l1 < 0:
            raise ValueError(f"write_l1 must be a finite number >= 0, got {self.write_l1!r}")
        if isinstance(self.write_l1_warmup, bool) or not isinstance(self.write_l1_warmup, int) \
                or self.write_l1_warmup < 0:
            raise ValueError(f"write_l1_warmup must be an integer >= 0, got {self.write_l1_warmup!r}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0 or None, got {self.time_limit_s!r}")
        if self.write_l1_on not in ("filler", "all"):
            raise ValueError(f"write_l1_on must be 'filler' or 'all', got {self.write_l1_on!r}")
        if not 0.0 <= self.min_depth <= self.max_depth <= 1.0:
            raise ValueError(f"need 0 <= min_depth <= max_depth <= 1, got {self.min_depth}, {self.max_depth}")


@dataclass
class TrainHistory:
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lm_loss: list[float] = field(default_factory=list)
    write_gate: list[float] = field(default_factory=list)  # mean b where write_l1 applies (nan without it)
    eval_step: list[int] = field(default_factory=list)
    eval_acc: list[float] = field(default_factory=list)


def niah_accuracy(mlm: MemoryLM, task: NiahTask, *, length: int, n: int, batch_size: int, seed: int,
                  depth: float | tuple[float, float] | None = None, memory_mode: str = "carry",
                  split: str = "eval") -> float:
    """Exact-match accuracy (all answer tokens by greedy argmax, correctly shifted) on held-out samples."""
    rng = random.Random(10_000_019 * (seed + 1) + length)
    hits, total = 0, 0
    was = mlm.training
    mlm.train(False)
    with torch.no_grad():
        while total < n:
            b = min(batch_size, n - total)
            ids, labels, _ = task.batch(rng, b, length, depth, split)
            out = mlm(ids, labels=labels, return_logits=False, memory_mode=memory_mode)
            hits += int(out.exact_match.sum())
            total += b
    mlm.train(was)
    return hits / total


def length_at(step: int, cfg: TrainNiahConfig, chunk_size: int) -> int:
    """Training length of ``step`` under the curriculum (``cfg.length`` without one)."""
    if cfg.min_length is None or cfg.curriculum_steps == 0 or step >= cfg.curriculum_steps:
        return cfg.length
    n = cfg.min_length + (cfg.length - cfg.min_length) * step / cfg.curriculum_steps
    return int(n) if n < chunk_size else max(chunk_size, int(n) // chunk_size * chunk_size)


def filler_mask(ids: torch.Tensor, samples: list[NiahSample], *, needle_only: bool = False) -> torch.Tensor:
    """``[B, T]`` bool: True outside the needle and distractor spans (``needle_only``: True on the needle)."""
    return needle_mask(ids, samples) if needle_only else ~needle_mask(ids, samples, distractors=True)


def plain_batch(task: NiahTask, rng: random.Random, tokens: int, seq_len: int) -> torch.Tensor:
    """``[ceil(tokens / seq_len), seq_len]`` ids of the task's plain text (training split)."""
    rows = -(-tokens // seq_len)
    return torch.tensor([task.plain_text(rng, seq_len, "train") for _ in range(rows)], dtype=torch.long)


def haystack_labels(ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token labels on the context (every token that is not an answer token); ``-100`` elsewhere."""
    return torch.where(labels == -100, ids, torch.full_like(ids, -100))


def _lr_at(step: int, cfg: TrainNiahConfig, elapsed_s: float = 0.0) -> float:
    # under a time limit the cosine follows the larger of the step and time shares: a run stopped by the clock
    # before cfg.steps still ends at the low learning rate instead of mid-schedule
    progress = elapsed_s / cfg.time_limit_s if cfg.time_limit_s else 0.0
    return cfg.lr * warmup_cosine(step, cfg.steps, cfg.warmup, progress=progress)


def train_niah(mlm: MemoryLM, task: NiahTask, cfg: TrainNiahConfig, out_dir: str | Path | None = None, *,
               resume: bool = True, progress: bool = True) -> TrainHistory:
    """Train the sidecar; with ``out_dir`` write checkpoints (resumable), ``history.json`` and ``curve.png``."""
    if cfg.write_l1 > 0 and not mlm.has_write_gates:
        raise ValueError("write_l1 needs memory cells with a write gate (gated-delta / hybrid)")
    params = mlm.memory_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    hist, start = TrainHistory(), 0
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and resume and (out / "ckpt" / "trainer.json").is_file():
        start, hist = _load_checkpoint(mlm, opt, out / "ckpt")
        log.info("resumed from step %d", start)
    mlm.train(True)
    bar = _progress(progress)
    task_id = bar.add_task("train-niah", total=cfg.steps, completed=start) if bar else None
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        rng = random.Random(cfg.seed * 1_000_003 + step)  # per-step seed: resume reproduces the same batches
        length = length_at(step, cfg, mlm.config.chunk_size)
        ids, labels, samples = task.batch(rng, cfg.batch_size, length, (cfg.min_depth, cfg.max_depth), "train")
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg, time.perf_counter() - t0)
        res, lm_loss, gate = _step_losses(mlm, task, cfg, rng, ids, labels, samples)
        loss = res.loss
        if lm_loss is not None:
            loss = loss + cfg.lm_weight * lm_loss
        if gate is not None:
            loss = loss + cfg.write_l1 * min(1.0, (step + 1) / max(1, cfg.write_l1_warmup)) * gate
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        hist.step.append(step + 1)
        hist.loss.append(float(res.loss.detach()))
        hist.lm_loss.append(float(lm_loss.detach()) if lm_loss is not None else float("nan"))
        hist.write_gate.append(float(gate.detach()) if gate is not None else float("nan"))
        over_time = cfg.time_limit_s is not None and time.perf_counter() - t0 > cfg.time_limit_s
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps or over_time:
            acc = niah_accuracy(mlm, task, length=cfg.length, n=cfg.eval_samples, batch_size=cfg.batch_size,
                                seed=cfg.seed, depth=(cfg.min_depth, cfg.max_depth))
            hist.eval_step.append(step + 1)
            hist.eval_acc.append(acc)
            log.info("step %d loss %.4f eval acc %.3f", step + 1, hist.loss[-1], acc)
        if bar:
            acc_s = f" acc {hist.eval_acc[-1]:.2f}" if hist.eval_acc else ""
            bar.update(task_id, advance=1, description=f"train-niah loss {hist.loss[-1]:.3f}{acc_s}")
        if out is not None and ((step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps or over_time):
            _save_checkpoint(mlm, opt, out / "ckpt", step + 1, hist, cfg)
        if over_time:
            log.info("time limit %.0f s reached after step %d", cfg.time_limit_s, step + 1)
            break
    if bar:
        bar.stop()
    log.info("trained %d steps in %.1f s", hist.step[-1] - start if hist.step else 0, time.perf_counter() - t0)
    if out is not None:
        mlm.save_memory(out / "memory")
        atomic_write_json(out / "history.json", {"config": asdict(cfg), **asdict(hist)})
        plot_curves(hist, out / "curve.png")
    return hist


def _step_losses(mlm: MemoryLM, task: NiahTask, cfg: TrainNiahConfig, rng: random.Random, ids: torch.Tensor,
                 labels: torch.Tensor, samples: list[NiahSample]):
    """``(haystack output, LM loss or None, write-gate mean or None)`` of one training step."""
    lm_labels = haystack_labels(ids, labels) if cfg.lm_weight > 0 and not cfg.lm_tokens else None
    wmask = None
    if cfg.write_l1 > 0:
        wmask = filler_mask(ids, samples) if cfg.write_l1_on == "filler" else torch.ones(ids.shape, dtype=torch.bool)
    res = mlm(ids, labels=labels, checkpoint=cfg.checkpoint, bptt_chunks=cfg.bptt_chunks, return_logits=False,
              lm_labels=lm_labels, write_mask=wmask)
    lm_loss = res.lm_loss
    if cfg.lm_tokens:
        seq_len = cfg.lm_seq_len or min(cfg.lm_tokens, 2 * mlm.config.chunk_size)
        plain = plain_batch(task, rng, cfg.lm_tokens, seq_len)
        lm_loss = mlm(plain, labels=plain, checkpoint=cfg.checkpoint, return_logits=False).loss
    return res, lm_loss, res.write_gate_mean


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from ..utils.progress import make_progress

    bar = make_progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    bar.start()
    return bar


def _save_checkpoint(mlm: MemoryLM, opt: torch.optim.Optimizer, d: Path, step: int, hist: TrainHistory,
                     cfg: TrainNiahConfig) -> None:
    mlm.save_memory(d / "memory")
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    atomic_save_safetensors(d / "optimizer.safetensors", tensors)
    # trainer.json is written last: its presence marks a complete checkpoint
    atomic_write_json(d / "trainer.json", {"step": step, "history": asdict(hist), "config": asdict(cfg),
                                           "param_groups": sd["param_groups"]})


def _load_checkpoint(mlm: MemoryLM, opt: torch.optim.Optimizer, d: Path) -> tuple[int, TrainHistory]:
    meta = read_json(d / "trainer.json", "train-niah trainer file")
    require_keys(meta, d / "trainer.json", ("step", "history", "param_groups"), "train-niah trainer file")
    mlm.load_memory(d / "memory")
    flat = load_safetensors_checked(d / "optimizer.safetensors", what="train-niah optimizer file", device=mlm.device)
    try:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, v in flat.items():
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = v
        opt_state = {"state": state, "param_groups": meta["param_groups"]}
        check_optimizer_state(opt, opt_state)
        opt.load_state_dict(opt_state)
        return int(meta["step"]), TrainHistory(**meta["history"])
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError, AttributeError, OverflowError) as e:
        raise CheckpointError(f"train-niah checkpoint {d}: optimizer or trainer state does not fit "
                              f"({one_line(e)[:200]})") from None


def plot_curves(hist: TrainHistory, path: str | Path) -> None:
    """Loss and eval-accuracy curves as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(hist.step, hist.loss, lw=0.8)
    ax[0].set(xlabel="step", ylabel="answer loss", yscale="log", title="train loss")
    ax[1].plot(hist.eval_step, hist.eval_acc, marker="o")
    ax[1].set(xlabel="step", ylabel="held-out exact match", ylim=(0, 1.02), title="NIAH accuracy")
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)
