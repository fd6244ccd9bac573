"""``cortex rl train|eval``: recurrent PPO on Gymnasium / POPGym environments."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..clikit import check_output_dir, check_output_file
from ..core.extras import MissingExtraError

app = typer.Typer(help="Reinforcement learning with cortexmem stacks (recurrent PPO).", no_args_is_help=True)


def _require_rl() -> None:
    import importlib.util

    missing = [m for m in ("torchrl", "gymnasium") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"cortex rl needs {', '.join(missing)}: pip install 'cortex-memory[rl]'")


@app.command()
def train(
    env: str = typer.Option(..., help="Gymnasium id, popgym-<Name>-v0 / a POPGym class name, or cortexmem/RepeatK-v0"),
    stack: str = typer.Option("lstm", help="built-in name (lstm, conv, conv_lstm), stack JSON, or pattern"),
    frames: int = typer.Option(100_000, help="environment steps in total"),
    num_envs: int = typer.Option(16, help="vectorised environment copies"),
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
    memory_inputs: str = typer.Option("auto", help="append previous action + first-step flag: auto|on|off"),
    resume: bool = typer.Option(False, help="continue from OUT/checkpoint up to --frames"),
    checkpoint_every: int = typer.Option(10, help="updates between checkpoints (0 = only at the end)"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    threads: int = typer.Option(1, help="torch CPU threads"),
) -> None:
    """Train recurrent PPO; prints the summary (MMER for POPGym envs) as JSON."""
    _require_rl()
    check_output_dir(out, "--out")
    if ("/" in stack or stack.endswith(".json")) and not Path(stack).exists():
        raise typer.BadParameter(f"--stack {stack}: no such stack file")
    import torch

    from .ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(max(1, threads))
    mem = {"auto": None, "on": True, "off": False}.get(memory_inputs)
    if memory_inputs not in ("auto", "on", "off"):
        raise typer.BadParameter(f"--memory-inputs must be auto, on or off, got {memory_inputs!r}")
    ckpt = out / "checkpoint"
    if resume:
        if not (ckpt / "trainer.json").is_file():
            raise typer.BadParameter(f"--resume: no checkpoint in {ckpt}")
        trainer = PPOTrainer.load(ckpt, out, overrides={"frames": frames})
    else:
        cfg = PPOConfig(
            env=env,
            stack=stack,
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
            memory_inputs=mem,
        )
        trainer = PPOTrainer(cfg, out)
    summary = trainer.train(progress=progress, checkpoint_every=checkpoint_every)
    typer.echo(json.dumps(summary, indent=2))


@app.command("eval")
def evaluate(
    checkpoint: Path = typer.Option(..., help="a checkpoint directory written by `cortex rl train`"),
    episodes: int = typer.Option(32, help="episodes to average over"),
    stochastic: bool = typer.Option(False, help="sample actions instead of taking the mode"),
    out: Path = typer.Option(None, help="optional JSON file for the result"),
) -> None:
    """Evaluate a checkpoint; prints mean/std episodic return as JSON."""
    _require_rl()
    import torch

    from ..core.io import atomic_write_json
    from .ppo import PPOTrainer

    torch.set_num_threads(1)
    if episodes < 1:
        raise typer.BadParameter(f"--episodes must be >= 1, got {episodes}")
    check_output_file(out, "--out")
    trainer = PPOTrainer.load(checkpoint)
    result = trainer.evaluate(episodes, deterministic=not stochastic)
    if out is not None:
        atomic_write_json(out, result)
    typer.echo(json.dumps(result, indent=2))
