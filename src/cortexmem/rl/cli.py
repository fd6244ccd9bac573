"""``cortex rl train|eval``: recurrent PPO on Gymnasium / POPGym environments."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..clikit import check_output_dir, check_output_file
from ..utils.extras import MissingExtraError

app = typer.Typer(help="Reinforcement learning with cortexmem stacks (recurrent PPO).", no_args_is_help=True)


def _require_rl() -> None:
    import importlib.util

    missing = [m for m in ("torchrl", "gymnasium") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"cortex rl needs {', '.join(missing)}: pip install 'cortex-memory[rl]'")


def _device_option() -> typer.Option:
    return typer.Option("auto", help="where policy, value and memory run: cpu, cuda, cuda:N or auto (envs: CPU)")


@app.command()
def train(
    env: str = typer.Option(..., help="Gymnasium id, popgym-<Name>-v0 / a POPGym class name, or cortexmem/RepeatK-v0"),
    stack: str = typer.Option(None, help="named stack (lstm_plain, gru, conv, conv_lstm, ...), stack JSON, or "
                                         "pattern [default: lstm_plain; with --resume: the checkpoint's]"),
    frames: int = typer.Option(100_000, help="environment steps in total"),
    num_envs: int = typer.Option(16, help="vectorised environment copies (256+ to feed a GPU)"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/rl"), help="output directory (metrics.json, returns.png, checkpoint/)"),
    d_hidden: int = typer.Option(64),
    num_layers: int = typer.Option(1, help="stack depth (repeats of the named stack's blocks)"),
    rollout_len: int = typer.Option(64, help="steps per env per update"),
    bptt: int = typer.Option(0, help="training sequence length (0 = rollout_len); must divide rollout_len"),
    epochs: int = typer.Option(4),
    minibatches: int = typer.Option(4),
    lr: float = typer.Option(3e-4),
    entropy_coeff: float = typer.Option(0.01),
    value_clip: float = typer.Option(0.0, help="clip value updates to old value +- this (0 = off)"),
    normalize_advantage: bool = typer.Option(True, help="normalise advantages per minibatch"),
    memory_inputs: str = typer.Option("auto", help="append previous action + first-step flag: auto|on|off"),
    device: str = _device_option(),
    amp: bool = typer.Option(False, help="bf16 autocast for encoder and memory (CUDA only)"),
    step_graph: str = typer.Option("auto", help="rollout memory steps as CUDA-graph replays: auto (on CUDA)|on|off"),
    resume: bool = typer.Option(False, help="continue from OUT/checkpoint up to --frames"),
    checkpoint_every: int = typer.Option(10, help="updates between checkpoints (0 = only at the end)"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    threads: int = typer.Option(1, help="torch CPU threads"),
) -> None:
    """Train recurrent PPO; prints the summary (MMER for POPGym envs, frames/s) as JSON."""
    _require_rl()
    check_output_dir(out, "--out")
    if stack and ("/" in stack or stack.endswith(".json")) and not Path(stack).exists():
        raise typer.BadParameter(f"--stack {stack}: no such stack file")
    import torch

    from .ppo import PPOConfig, PPOTrainer, read_checkpoint_meta, resolve_device

    torch.set_num_threads(max(1, threads))
    if resolve_device(device).type != "cuda":
        for flag, on in (("--amp", amp), ("--step-graph on", step_graph == "on")):
            if on:
                raise typer.BadParameter(f"{flag} needs a CUDA device; --device {device} runs on the CPU")
    mem = {"auto": None, "on": True, "off": False}.get(memory_inputs)
    if memory_inputs not in ("auto", "on", "off"):
        raise typer.BadParameter(f"--memory-inputs must be auto, on or off, got {memory_inputs!r}")
    if step_graph not in ("auto", "on", "off"):
        raise typer.BadParameter(f"--step-graph must be auto, on or off, got {step_graph!r}")
    if value_clip < 0:
        raise typer.BadParameter(f"--value-clip must be >= 0, got {value_clip}")
    ckpt = out / "checkpoint"
    if resume:
        if not (ckpt / "trainer.json").is_file():
            raise typer.BadParameter(f"--resume: no checkpoint in {ckpt}")
        saved = read_checkpoint_meta(ckpt)["config"]
        for flag, given, have in (("--env", env, saved.get("env")), ("--stack", stack, saved.get("stack"))):
            if given is not None and given != have:
                raise ValueError(f"--resume: {ckpt} was trained with {flag} {have!r}, not {given!r}")
        trainer = PPOTrainer.load(ckpt, out, overrides={"frames": frames, "device": device, "amp": amp,
                                                             "step_graph": step_graph})
    else:
        cfg = PPOConfig(
            env=env,
            stack=stack or "lstm_plain",
            frames=frames,
            num_envs=num_envs,
            seed=seed,
            d_hidden=d_hidden,
            num_layers=num_layers,
            rollout_len=rollout_len,
            bptt=bptt or None,
            epochs=epochs,
            minibatches=minibatches,
            lr=lr,
            entropy_coeff=entropy_coeff,
            value_clip=value_clip or None,
            normalize_advantage=normalize_advantage,
            memory_inputs=mem,
            device=device,
            amp=amp,
            step_graph=step_graph,
        )
        trainer = PPOTrainer(cfg, out)
    summary = trainer.train(progress=progress, checkpoint_every=checkpoint_every)
    typer.echo(json.dumps(summary, indent=2))


@app.command("eval")
def evaluate(
    checkpoint: Path = typer.Option(..., help="a checkpoint directory written by `cortex rl train`"),
    episodes: int = typer.Option(32, help="episodes to average over"),
    stochastic: bool = typer.Option(False, help="sample actions instead of taking the mode"),
    env: str = typer.Option(None, help="evaluate on this env instead of the checkpoint's (same spaces)"),
    stack: str = typer.Option(None, help="refuse the checkpoint unless it was trained with this stack"),
    device: str = _device_option(),
    out: Path = typer.Option(None, help="optional JSON file for the result"),
) -> None:
    """Evaluate a checkpoint; prints mean/std episodic return as JSON."""
    _require_rl()
    import torch

    from ..utils.io import atomic_write_json
    from .ppo import PPOTrainer, read_checkpoint_meta, resolve_device

    torch.set_num_threads(1)
    resolve_device(device)
    if episodes < 1:
        raise typer.BadParameter(f"--episodes must be >= 1, got {episodes}")
    check_output_file(out, "--out")
    saved = read_checkpoint_meta(checkpoint)["config"]
    if stack is not None and stack != saved.get("stack"):
        raise ValueError(f"{checkpoint} was trained with --stack {saved.get('stack')!r}, not {stack!r}")
    overrides = {"device": device, "amp": False, **({"env": env} if env else {})}
    trainer = PPOTrainer.load(checkpoint, overrides=overrides)
    result = trainer.evaluate(episodes, deterministic=not stochastic)
    if out is not None:
        atomic_write_json(out, result)
    typer.echo(json.dumps(result, indent=2))


@app.command()
def bench(
    envs: str = typer.Option("suite", help="comma-separated env ids, or 'suite' (10 POPGym envs at Easy)"),
    stacks: str = typer.Option("suite", help="comma-separated stacks, or 'suite' (lstm_plain, gru, D, GD, AXMS)"),
    seeds: int = typer.Option(3, help="seeds 0..N-1 per (env, stack)"),
    frames: int = typer.Option(1_000_000, help="frames per run (the same for every stack)"),
    jobs: int = typer.Option(1, help="runs at a time, each in its own process (one CPU core each)"),
    device: str = _device_option(),
    num_envs: int = typer.Option(None, help="envs per run [256]"),
    d_hidden: int = typer.Option(None, help="width [64]"),
    rollout_len: int = typer.Option(None, help="steps per env per update [64]"),
    bptt: int = typer.Option(None, help="training sequence length [32]"),
    lr: float = typer.Option(None, help="learning rate [5e-4]"),
    max_minutes: float = typer.Option(None, help="start no new run after this many minutes (finished runs kept)"),
    plots: bool = typer.Option(True, help="draw PNGs (needs matplotlib; `cortex rl report` can draw them later)"),
    out: Path = typer.Option(Path("runs/rl_bench"), help="results.json, table.md, curves.png, runs/"),
) -> None:
    """Run the POPGym suite; prints the MMER table (mean ± std over seeds)."""
    _require_rl()
    from .bench import run_bench
    from .ppo import resolve_device

    resolve_device(device)
    if max_minutes is not None and max_minutes <= 0:
        raise typer.BadParameter(f"--max-minutes must be > 0, got {max_minutes}")
    result = run_bench(envs, stacks, seeds=seeds, frames=frames, jobs=jobs, out=out, max_minutes=max_minutes,
                       plots=plots,
                       device=device, num_envs=num_envs, d_hidden=d_hidden, rollout_len=rollout_len, bptt=bptt,
                       lr=lr)
    typer.echo((out / "table.md").read_text(encoding="utf-8"))
    for key in ("not_run", "failed"):
        if result[key]:
            typer.echo(f"{key}: {len(result[key])} run(s), listed in {out / 'results.json'}")
    if result["failed"]:
        raise typer.Exit(1)


@app.command()
def report(
    results: list[Path] = typer.Argument(..., help="results.json files (or directories holding one) to merge"),
    out: Path = typer.Option(..., help="directory for the merged results.json, table.md, curves.png"),
) -> None:
    """Merge bench batches into one MMER table, curves and results file."""
    from .bench import merge

    merged = merge(results, out)
    typer.echo((out / "table.md").read_text(encoding="utf-8"))
    typer.echo(f"{len(merged['runs'])} runs merged into {out / 'results.json'}")
