"""Training: AdamW, warmup + cosine, AMP on GPU, loss-spike rollback, pickle-free bit-exact checkpoints."""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import uuid
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..blocks.base import BlockConfig
from ..core.config import TaggedConfig, polymorphic
from ..utils.io import (
    CheckpointError,
    atomic_save_safetensors,
    atomic_write_json,
    check_optimizer_state,
    load_safetensors_checked,
    load_state_checked,
    one_line,
    read_versioned,
)
from ..utils.paths import safe_name
from ..utils.schedule import warmup_cosine
from .checkpointing import flatten_optimizer, publish_dir, remove_stale, rng_state, set_rng_state, unflatten_optimizer
from .data import TokenData
from .memory import MemorySystemConfig
from .model import CortexLM, LMConfig, load_pretrained
from .tokenizer import load_tokenizer

log = logging.getLogger(__name__)

TRAIN_FORMAT = "cortexmem.lm.trainer"
TRAIN_VERSION = 1
MODES = {
    "fast": {"dim": 64, "n_layers": 2, "n_heads": 4, "seq_len": 64},
    "standard": {"dim": 256, "n_layers": 4, "n_heads": 8, "seq_len": 256},
    "full": {"dim": 512, "n_layers": 8, "n_heads": 8, "seq_len": 512},
}


class TrainConfig(TaggedConfig):
    """Everything ``cortex lm train`` accepts; ``None`` sizes come from ``mode``."""

    train_data: str
    val_data: str | None = None
    tokenizer: str | None = None
    checkpoint_dir: str
    mode: Literal["fast", "standard", "full"] = "fast"
    dim: int | None = Field(default=None, ge=4)
    n_layers: int | None = Field(default=None, ge=1)
    n_heads: int | None = Field(default=None, ge=1)
    seq_len: int | None = Field(default=None, ge=2)
    cortex_blocks: list[polymorphic(BlockConfig)] = Field(default_factory=list)
    epochs: int = Field(default=1, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.1, ge=0)
    grad_clip: float = Field(default=1.0, ge=0)
    stm_capacity: int = Field(default=64, ge=1)
    ltm_capacity: int = Field(default=10_000, ge=1)
    seed: int = 0
    save_every: int = Field(default=200, ge=1)
    eval_batches: int = Field(default=20, ge=1)
    log_every: int = Field(default=10, ge=1)
    spike_factor: float = Field(default=3.0, gt=1)
    spike_warmup: int = Field(default=20, ge=1)
    snapshot_every: int = Field(default=50, ge=1)
    wandb: bool = False
    progress: bool = False

    def sizes(self) -> dict[str, int]:
        base = dict(MODES[self.mode])
        base.update(
            {
                k: v
                for k, v in (
                    ("dim", self.dim),
                    ("n_layers", self.n_layers),
                    ("n_heads", self.n_heads),
                    ("seq_len", self.seq_len),
                )
                if v is not None
            }
        )
        return base


class SpikeGuard:
    """Flags a loss that is non-finite or above ``factor`` x its running mean (after ``warmup`` updates)."""

    def __init__(self, factor: float, warmup: int, decay: float = 0.95) -> None:
        self.factor, self.warmup, self.decay = factor, warmup, decay
        self.mean, self.count = 0.0, 0

    def is_spike(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        return self.count >= self.warmup and loss > self.factor * self.mean

    def update(self, loss: float) -> None:
        self.mean = loss if self.count == 0 else self.decay * self.mean + (1 - self.decay) * loss
        self.count += 1

    def state(self) -> dict:
        return {"mean": self.mean, "count": self.count}

    def load(self, s: dict) -> None:
        self.mean, self.count = float(s["mean"]), int(s["count"])


class Trainer:
    """Owns model, optimizer, data order and checkpoints; ``fit`` runs to ``max_steps`` / ``epochs``."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        sizes = cfg.sizes()
        self.data = TokenData(cfg.train_data, sizes["seq_len"])
        self.val = TokenData(cfg.val_data, sizes["seq_len"]) if cfg.val_data else None
        tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
        vocab = tokenizer.vocab_size if tokenizer else self.data.vocab_size
        if vocab != self.data.vocab_size:
            raise ValueError(f"tokenizer vocab {vocab} != vocab {self.data.vocab_size} of {cfg.train_data}")
        if self.val is not None and self.val.vocab_size != vocab:
            raise ValueError(f"--val-data {cfg.val_data} has vocab {self.val.vocab_size}, the training data {vocab}")
        lm_cfg = LMConfig(
            vocab_size=vocab,
            dim=sizes["dim"],
            n_layers=sizes["n_layers"],
            n_heads=sizes["n_heads"],
            max_seq_len=sizes["seq_len"],
            cortex_blocks=cfg.cortex_blocks,
            memory=MemorySystemConfig(stm_capacity=cfg.stm_capacity, ltm_capacity=cfg.ltm_capacity),
        )
        self.model = CortexLM(lm_cfg, tokenizer).to(self.device)
        self.opt = self._make_optimizer()
        self.steps_per_epoch = self.data.n_windows // (cfg.batch_size * cfg.grad_accum)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{cfg.train_data}: {self.data.n_windows} windows < one step of batch_size x "
                f"grad_accum = {cfg.batch_size * cfg.grad_accum}"
            )
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.step, self.best_val, self.rollbacks = 0, math.inf, 0
        self.history: list[dict] = []
        self.guard = SpikeGuard(cfg.spike_factor, cfg.spike_warmup)
        self.wandb = self._init_wandb() if cfg.wandb else None
        if resume is not None:
            self.load_checkpoint(resume)
        self._snapshot = self._take_snapshot()

    def _make_optimizer(self) -> torch.optim.AdamW:
        # embeddings are not decayed: rare tokens must keep a usable vector for the copy-from-memory read
        emb = {id(self.model.embed.weight), id(self.model.pos.weight)}
        decay = [p for p in self.model.slow_parameters() if p.dim() >= 2 and id(p) not in emb]
        rest = [p for p in self.model.slow_parameters() if p.dim() < 2 or id(p) in emb]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=self.cfg.lr,
            betas=(0.9, 0.95),
        )

    def _init_wandb(self):
        try:
            import wandb
        except ImportError:
            raise ImportError("--wandb needs the 'wandb' package, which is not installed: pip install wandb") from None
        return wandb.init(project="cortexmem-lm", config=self.cfg.model_dump(mode="json"))

    def lr_at(self, step: int) -> float:
        """Linear warmup over ``warmup_ratio`` of the steps, then cosine decay to ``min_lr_ratio * lr``."""
        warm = int(self.cfg.warmup_ratio * self.total_steps)
        return self.cfg.lr * warmup_cosine(step, self.total_steps, warm, floor=self.cfg.min_lr_ratio)

    def _batches(self, step: int):
        epoch, i = divmod(step, self.steps_per_epoch)
        order = self.data.epoch_order(epoch, self.cfg.seed)
        B, A = self.cfg.batch_size, self.cfg.grad_accum
        for m in range(A):
            w = order[(i * A + m) * B : (i * A + m + 1) * B]
            x, y = self.data.batch(w)
            yield x.to(self.device), y.to(self.device)

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def train_step(self) -> dict:
        """One optimizer step (``grad_accum`` micro-batches); a spike rolls back to the last snapshot."""
        self.model.train()
        lr = self.lr_at(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        total = 0.0
        for x, y in self._batches(self.step):
            with self._autocast():
                _, loss = self.model(x, y)
            (loss / self.cfg.grad_accum).backward()
            total += float(loss.detach()) / self.cfg.grad_accum
        rec = {"step": self.step, "loss": total, "lr": lr}
        if self.guard.is_spike(total):
            log.warning(
                "step %d: loss spike %.4f (running mean %.4f); rolling back to step %d",
                self.step,
                total,
                self.guard.mean,
                self._snapshot["step"],
            )
            # the batches since the snapshot are not replayed: the stream moves on past the bad batch
            self._restore_snapshot()
            self.rollbacks += 1
            rec["rollback"] = True
        else:
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.slow_parameters(), self.cfg.grad_clip)
            self.opt.step()
            self.guard.update(total)
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        if self.step % self.cfg.snapshot_every == 0 and "rollback" not in rec:
            self._snapshot = self._take_snapshot()
        return rec

    def _take_snapshot(self) -> dict:
        return {
            "step": self.step,
            "model": copy.deepcopy(self.model.state_dict()),
            "opt": copy.deepcopy(self.opt.state_dict()),
            "guard": self.guard.state(),
        }

    def _restore_snapshot(self) -> None:
        self.model.load_state_dict(self._snapshot["model"])
        self.opt.load_state_dict(copy.deepcopy(self._snapshot["opt"]))
        self.guard.load(self._snapshot["guard"])

    @torch.no_grad()
    def evaluate(self, *, memory: bool = True) -> float:
        """Mean validation loss over ``eval_batches`` batches, with (default) or without the in-batch bank."""
        if self.val is None:
            return math.nan
        self.model.eval()
        B, losses = self.cfg.batch_size, []
        state = torch.get_rng_state()  # the bank's row choice must not disturb the training RNG stream
        torch.manual_seed(self.cfg.seed)
        for b in range(min(self.cfg.eval_batches, max(1, self.val.n_windows // B))):
            w = np.arange(b * B, min((b + 1) * B, self.val.n_windows))
            x, y = self.val.batch(w)
            with self._autocast():
                losses.append(float(self.model(x.to(self.device), y.to(self.device), bank=memory)[1]))
        torch.set_rng_state(state)
        return float(np.mean(losses))

    def fit(self, *, until: int | None = None) -> list[dict]:
        """Train to ``until`` (default: end); saves ``last`` (each ``save_every``), ``epoch_N``, ``best``."""
        end = min(until or self.total_steps, self.total_steps)
        prog = self._progress(end)
        try:
            while self.step < end:
                rec = self.train_step()
                self.history.append(rec)
                if prog is not None:
                    prog[0].update(prog[1], completed=self.step, description=f"loss {rec['loss']:.3f}")
                if self.wandb is not None and self.step % self.cfg.log_every == 0:
                    self.wandb.log({"loss": rec["loss"], "lr": rec["lr"]}, step=self.step)
                if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                    self._end_of_epoch()
                if self.step % self.cfg.save_every == 0:
                    self.save_checkpoint("last")
            self.save_checkpoint("last")
        finally:
            if prog is not None:
                prog[0].stop()
        return self.history

    def _end_of_epoch(self) -> None:
        epoch = math.ceil(self.step / self.steps_per_epoch)
        val = self.evaluate()
        if math.isnan(val):
            recent = [r["loss"] for r in self.history[-self.steps_per_epoch :] if "rollback" not in r]
            val = float(np.mean(recent)) if recent else math.inf
        log.info("epoch %d (step %d): val loss %.4f", epoch, self.step, val)
        if self.wandb is not None:
            self.wandb.log({"val_loss": val}, step=self.step)
        if self.step % self.steps_per_epoch == 0:
            self.save_checkpoint(f"epoch_{epoch}")
        if val < self.best_val:
            self.best_val = val
            self.save_checkpoint("best")

    def _progress(self, end: int):
        if not self.cfg.progress:
            return None
        from ..utils.progress import make_progress

        bar = make_progress()
        bar.start()
        return bar, bar.add_task("training", total=end, completed=self.step)

    # ---- checkpoints
    def save_checkpoint(self, name: str) -> Path:
        """``<checkpoint_dir>/<name>/``: model + memory, ``train_state.safetensors``, ``trainer.json``.

        Written into a fresh hidden directory, then published as the real folder ``<name>`` by an atomic swap,
        so a crash at any point leaves the previous checkpoint whole (``cp -r`` copies a plain folder).
        """
        root = Path(self.cfg.checkpoint_dir)
        name = safe_name(name, "checkpoint name")
        root.mkdir(parents=True, exist_ok=True)
        remove_stale(root, name)
        d = root / f".{name}.{uuid.uuid4().hex}"
        self.model.save_pretrained(d)
        opt_t, opt_meta = flatten_optimizer(self.opt.state_dict())
        rng_t, rng_meta = rng_state()
        atomic_save_safetensors(d / "train_state.safetensors", {**opt_t, **rng_t})
        atomic_write_json(
            d / "trainer.json",
            {
                "format": TRAIN_FORMAT,
                "version": TRAIN_VERSION,
                "train_config": self.cfg.model_dump(mode="json"),
                "step": self.step,
                "best_val": None if math.isinf(self.best_val) else self.best_val,
                "rollbacks": self.rollbacks,
                "guard": self.guard.state(),
                "optimizer": opt_meta,
                "rng": rng_meta,
                "history": self.history[-1000:],
            },
        )
        return publish_dir(d, root / name)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore model, memory, optimizer, RNGs and counters (safetensors + JSON; nothing unpickled)."""
        d = Path(path)
        meta_file = d / "trainer.json"
        meta = read_versioned(meta_file, format=TRAIN_FORMAT, version=TRAIN_VERSION, what="cortexmem LM trainer file",
                              required=("step", "best_val", "rollbacks", "guard", "optimizer", "rng", "history"))
        loaded = load_pretrained(d, map_location=str(self.device))
        load_state_checked(self.model, loaded.state_dict(), d / "model.safetensors", "LM weights file")
        state_file = d / "train_state.safetensors"
        tensors = load_safetensors_checked(state_file, what="LM train-state file", device=self.device)
        try:
            opt_state = unflatten_optimizer(tensors, meta["optimizer"])
            check_optimizer_state(self.opt, opt_state)
            self.opt.load_state_dict(opt_state)
            cpu = {k: v.cpu() for k, v in tensors.items() if k.startswith("rng.")}
            set_rng_state(cpu, meta["rng"])
            step, rollbacks = int(meta["step"]), int(meta["rollbacks"])
            best_val = math.inf if meta["best_val"] is None else float(meta["best_val"])
            self.guard.load(meta["guard"])
            history = list(meta["history"])
        except (KeyError, IndexError, ValueError, TypeError, RuntimeError, AttributeError, OverflowError) as e:
            raise CheckpointError(f"LM checkpoint {d}: optimizer or trainer state does not fit "
                                  f"({one_line(e)[:200]})") from None
        self.model.memory = loaded.memory
        self.step, self.rollbacks, self.best_val, self.history = step, rollbacks, best_val, history
