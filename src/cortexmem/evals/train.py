"""Train one stack on one task (optionally data-parallel, optionally truncated BPTT) and measure it."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from tensordict import TensorDict
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from ..runtime.precision import tf32_mode
from ..utils.schedule import warmup_cosine
from .ddp import DistContext
from .models import EvalModel, state_floats, step_vs_sequence_error
from .schema import Curves, EvalSettings, RunResult
from .stacks import build_stack
from .tasks import TEST, TRAIN, TaskData, TaskSpec

log = logging.getLogger(__name__)

#: test samples used by the step-vs-sequence check
CHECK_SAMPLES = 4
DEPTH_BINS = 5


def _to(data: TaskData, device: torch.device) -> TaskData:
    return TaskData(data.tokens.to(device), data.targets.to(device), data.mask.to(device),
                    {k: v.to(device) for k, v in data.meta.items()})


def _rows(data: TaskData, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return data.tokens[idx], data.targets[idx], data.mask[idx]


def _lr_lambda(total: int) -> Callable[[int], float]:
    warm = max(1, total // 20)
    return lambda step: warmup_cosine(step, total, warm)


def _masked_loss(wrapped: nn.Module, tokens: Tensor, targets: Tensor, mask: Tensor, count: Tensor,
                 state: TensorDict | None = None, dense: bool | None = None) -> tuple[Tensor, TensorDict | None]:
    """Summed cross-entropy at the True positions of ``mask``, over ``count``, and the new state.

    On CUDA the head runs at every position and the loss ignores the others: selecting the masked positions
    first has a data-dependent size, a host sync per step that leaves a small model's GPU idle between steps. On
    the CPU the selection is cheaper than the head at every position (``dense`` None: by device)."""
    if tokens.is_cuda if dense is None else dense:
        logits, state = wrapped(tokens, None, state)
        scored = torch.where(mask, targets, torch.full_like(targets, -100))  # -100: cross_entropy's ignore_index
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), scored.flatten(), reduction="sum")
    else:
        logits, state = wrapped(tokens, mask, state)
        loss = nn.functional.cross_entropy(logits, targets[mask], reduction="sum")
    return loss / count, state


def _train_batch(model: EvalModel, wrapped: nn.Module, ctx: DistContext, tokens: Tensor, targets: Tensor,
                 mask: Tensor, chunk: int | None) -> Tensor:
    """Forward/backward one batch (gradients left in ``.grad``); returns the mean masked cross-entropy as a 0-d
    tensor on the device (read once per epoch: no host sync per step)."""
    count = mask.sum().clamp_min(1)
    if chunk is None or not model.recurrent or chunk >= tokens.shape[1]:
        loss, _ = _masked_loss(wrapped, tokens, targets, mask, count)
        loss.backward()
        return loss.detach()
    # Truncated BPTT: the state is carried across chunks and detached, so gradients stay within a chunk.
    # Under DDP, gradients accumulate locally (no_sync) and are all-reduced by the last chunk's backward.
    state, total = None, torch.zeros((), device=tokens.device)
    bounds = [(s, min(s + chunk, tokens.shape[1])) for s in range(0, tokens.shape[1], chunk)]
    for i, (s, e) in enumerate(bounds):
        last = i == len(bounds) - 1
        m = mask[:, s:e]
        if not last and not m.any():
            with torch.no_grad():
                _, state = model.features(tokens[:, s:e], state)
            continue
        sync = nullcontext() if last or not ctx.enabled else wrapped.no_sync()
        with sync:
            loss, state = _masked_loss(wrapped, tokens[:, s:e], targets[:, s:e], m, count, state)
            loss.backward()
        state = state.detach()
        total = total + loss.detach()
    return total


@torch.no_grad()
def evaluate(model: EvalModel, data: TaskData, ctx: DistContext, batch_size: int
             ) -> tuple[float, float, dict[str, float]]:
    """``(accuracy, loss, slices)`` over this rank's shard of ``data``, reduced over all ranks."""
    was = model.training
    model.eval()
    shard = torch.arange(ctx.rank, len(data), ctx.world_size, device=data.tokens.device)
    correct = total = loss_sum = 0.0
    depth = data.meta.get("depth")
    bin_correct = torch.zeros(DEPTH_BINS, dtype=torch.float64)
    bin_total = torch.zeros(DEPTH_BINS, dtype=torch.float64)
    for start in range(0, len(shard), batch_size):
        idx = shard[start:start + batch_size]
        tokens, targets, mask = _rows(data, idx)
        logits, _ = model(tokens, mask)
        tgt = targets[mask]
        hit = logits.argmax(-1) == tgt
        correct += hit.sum().item()
        total += hit.numel()
        loss_sum += nn.functional.cross_entropy(logits, tgt, reduction="sum").item()
        if depth is not None:
            # one scored position per sample (the last), so ``hit`` lines up with the rows
            b = (depth[idx] * DEPTH_BINS).long().clamp(0, DEPTH_BINS - 1).cpu()
            bin_correct += torch.bincount(b, hit.double().cpu(), DEPTH_BINS)
            bin_total += torch.bincount(b, minlength=DEPTH_BINS).double()
    model.train(was)
    red = ctx.sum([correct, total, loss_sum, *bin_correct.tolist(), *bin_total.tolist()])
    correct, total, loss_sum = red[:3]
    slices = {}
    if depth is not None:
        bc, bt = red[3:3 + DEPTH_BINS], red[3 + DEPTH_BINS:]
        for i in range(DEPTH_BINS):
            if bt[i]:
                slices[f"depth {i / DEPTH_BINS:.1f}-{(i + 1) / DEPTH_BINS:.1f}"] = bc[i] / bt[i]
    return correct / max(total, 1), loss_sum / max(total, 1), slices


def run_one(stack: str, spec: TaskSpec, cfg: EvalSettings, ctx: DistContext,
            on_step: Callable[[int, int], None] | None = None) -> RunResult:
    """Train ``stack`` on ``spec`` for ``cfg.epochs`` epochs and return its measured result.

    ``on_step(done, total)`` is called after every optimizer step (used for progress bars).
    """
    torch.manual_seed(cfg.seed)
    device = ctx.device
    core = build_stack(stack, cfg.d_hidden)
    model = EvalModel(core, spec.vocab_size, spec.num_classes, cfg.d_hidden).to(device)
    params = sum(p.numel() for p in model.parameters())
    train = _to(spec.split(TRAIN, cfg.train_size, cfg.seed), device)
    test = _to(spec.split(TEST, cfg.test_size, cfg.seed), device)
    wrapped: nn.Module = DistributedDataParallel(model) if ctx.enabled else model
    # fused: one kernel for every parameter's update instead of a few per tensor (CUDA only)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")
    sampler = DistributedSampler(range(len(train)), num_replicas=ctx.world_size, rank=ctx.rank,
                                 shuffle=True, seed=cfg.seed)
    per_epoch = math.ceil(len(sampler) / cfg.batch_size)
    total_steps = per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total_steps))
    chunk = cfg.chunk_size if model.recurrent else None
    if cfg.chunk_size and not model.recurrent:
        log.info("%s is not recurrent: --chunk-size does not apply, it trains on full sequences", stack)

    with tf32_mode(cfg.tf32):  # training and scoring; the step-vs-sequence check below stays in fp32
        losses: list[float] = []
        epoch_acc: list[float] = []
        train_time, tokens_seen, step = 0.0, 0, 0
        model.train()
        for epoch in range(cfg.epochs):
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler), device=device)
            t0 = time.perf_counter()
            epoch_losses: list[Tensor] = []
            for start in range(0, len(order), cfg.batch_size):
                tokens, targets, mask = _rows(train, order[start:start + cfg.batch_size])
                epoch_losses.append(_train_batch(model, wrapped, ctx, tokens, targets, mask, chunk))
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                tokens_seen += tokens.numel()
                step += 1
                if on_step is not None:
                    on_step(step, total_steps)
            losses += torch.stack(epoch_losses).tolist() if epoch_losses else []  # waits for the epoch's last step
            train_time += time.perf_counter() - t0
            epoch_acc.append(evaluate(model, test, ctx, cfg.batch_size * 4)[0])
            if cfg.target_accuracy is not None and epoch_acc[-1] >= cfg.target_accuracy:
                break  # every rank sees the same reduced accuracy, so all stop together

        acc, test_loss, slices = evaluate(model, test, ctx, cfg.batch_size * 4)
    losses = [v / ctx.world_size for v in ctx.sum(losses)]
    tokens_all = ctx.sum([float(tokens_seen)])[0]
    train_time = ctx.max(train_time)
    err, mode = step_vs_sequence_error(model, test.tokens[:CHECK_SAMPLES])
    last_epoch = losses[-per_epoch:] if losses else [float("nan")]
    return RunResult(
        stack=stack, task=spec.name, length=spec.length, options=dict(spec.options), d_hidden=cfg.d_hidden,
        chance=spec.chance, state_floats=state_floats(model, spec.length),
        test_accuracy=acc, test_loss=test_loss, final_loss=sum(last_epoch) / len(last_epoch), params=params,
        train_time_s=train_time, tokens_per_s=tokens_all / max(train_time, 1e-9), step_seq_max_abs_err=err,
        step_check=mode, chunk_size=chunk, steps=step, tf32=cfg.tf32, slices=slices,
        curves=Curves(step=list(range(1, step + 1)), train_loss=losses, epoch=list(range(1, len(epoch_acc) + 1)),
                      test_accuracy=epoch_acc),
    )
