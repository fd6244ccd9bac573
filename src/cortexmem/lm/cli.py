"""``cortex lm``: tokenizer, prepare, demo-data, train, generate, chat."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.console import Console

from ..clikit import check_input_file, check_output_dir, check_output_file, setup_logging

app = typer.Typer(help="Small LM with STM -> LTM -> Archive memory that learns while it runs.", no_args_is_help=True)
console = Console()


class _Counted:
    """An iterator that counts what it yields (to tell an empty corpus from a small one)."""

    def __init__(self, it) -> None:
        self.it, self.n = iter(it), 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.it)
        self.n += 1
        return item


def _setup_logging() -> None:
    """Kept for callers; ``--log-level`` (added to every sub-command by ``cortex``) sets logging up."""
    if not logging.getLogger().handlers:
        setup_logging("INFO")


@app.command()
def tokenizer(
    input: Path = typer.Option(..., "--input", help="JSONL with a text field"),
    vocab_size: int = typer.Option(4096, "--vocab-size"),
    output: Path = typer.Option(Path("tokenizer"), "--output", help="directory for tokenizer files"),
    field: str = typer.Option("text", "--field"),
    byte: bool = typer.Option(False, "--byte", help="save the plain byte tokenizer instead of training BPE"),
) -> None:
    """Train a byte-level BPE on a JSONL corpus (or save the byte fallback)."""
    from .tokenizer import ByteTokenizer, iter_jsonl_texts, train_bpe

    check_output_dir(output, "--output")
    if byte:
        tok = ByteTokenizer()
    else:
        check_input_file(input, "--input")
        texts = _Counted(iter_jsonl_texts(input, field))
        tok = train_bpe(texts, vocab_size)
        if texts.n == 0:
            raise typer.BadParameter(f"--input {input} has no JSONL line with a {field!r} string field; "
                                     f"nothing to train on")
    tok.save(output)
    console.print(f"saved {tok.kind} tokenizer ({tok.vocab_size} tokens) to {output}")


@app.command()
def prepare(
    input: Path = typer.Option(..., "--input"),
    output: Path = typer.Option(..., "--output", help="train token file, e.g. train.bin"),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="tokenizer dir (default: bytes)"),
    val_output: Path | None = typer.Option(None, "--val-output", help="default: <output stem>.val.bin"),
    val_fraction: float = typer.Option(0.05, "--val-fraction"),
    seed: int = typer.Option(0, "--seed"),
    field: str = typer.Option("text", "--field"),
) -> None:
    """Tokenize JSONL into uint16/uint32 memmaps with a train/val split; bad lines are reported, skipped."""
    from .data import prepare as run_prepare
    from .data import val_path_for
    from .tokenizer import load_tokenizer

    check_input_file(input, "--input")
    check_output_file(output, "--output")
    check_output_file(val_output, "--val-output")
    _setup_logging()
    rep = run_prepare(
        input,
        output,
        load_tokenizer(tokenizer),
        val_output=val_output,
        val_fraction=val_fraction,
        seed=seed,
        text_field=field,
        progress=True,
    )
    for lineno, reason in rep.bad_lines:
        console.print(f"[yellow]{input}:{lineno}: skipped ({reason})")
    console.print(
        f"{rep.docs} docs -> {output} ({rep.train_tokens} tokens), "
        f"{val_output or val_path_for(output)} ({rep.val_tokens} tokens); {len(rep.bad_lines)} bad lines"
    )


@app.command("demo-data")
def demo_data(
    output: Path = typer.Option(Path("demo.jsonl"), "--output"),
    docs: int = typer.Option(2000, "--docs", min=1),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a small generated corpus (fictional countries, capitals, rivers) so everything runs offline."""
    from .data import write_demo_data

    check_output_file(output, "--output")
    write_demo_data(output, docs, seed)
    console.print(f"wrote {docs} documents to {output}")


@app.command()
def train(
    train_data: Path = typer.Option(..., "--train-data"),
    val_data: Path | None = typer.Option(None, "--val-data"),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="tokenizer dir (default: bytes)"),
    mode: str = typer.Option("fast", "--mode", help="fast | standard | full"),
    dim: int | None = typer.Option(None, "--dim"),
    layers: int | None = typer.Option(None, "--layers"),
    heads: int | None = typer.Option(None, "--heads"),
    seq_len: int | None = typer.Option(None, "--seq-len"),
    cortex_lstm: bool = typer.Option(False, "--cortex-lstm", help="interleave an LSTM cortex block"),
    epochs: int = typer.Option(1, "--epochs"),
    max_steps: int | None = typer.Option(None, "--max-steps"),
    batch_size: int = typer.Option(16, "--batch-size"),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    lr: float = typer.Option(3e-3, "--lr"),
    warmup_ratio: float = typer.Option(0.05, "--warmup-ratio"),
    weight_decay: float = typer.Option(0.1, "--weight-decay"),
    grad_clip: float = typer.Option(1.0, "--grad-clip"),
    stm_capacity: int = typer.Option(64, "--stm-capacity"),
    ltm_capacity: int = typer.Option(10_000, "--ltm-capacity"),
    checkpoint_dir: Path = typer.Option(Path("checkpoints"), "--checkpoint-dir"),
    resume: str | None = typer.Option(None, "--resume", help="auto | PATH"),
    save_every: int = typer.Option(200, "--save-every"),
    seed: int = typer.Option(0, "--seed"),
    wandb: bool = typer.Option(False, "--wandb"),
) -> None:
    """Train (AdamW, warmup + cosine, AMP on GPU, spike rollback); checkpoints best / epoch_N / last."""
    import torch

    from ..blocks.standard import PassThroughBlockConfig
    from ..cells.lstm import LSTMCellConfig
    from .checkpointing import resolve_resume
    from .train import TrainConfig, Trainer

    check_output_dir(checkpoint_dir, "--checkpoint-dir")
    for flag, path in (("--train-data", train_data), ("--val-data", val_data)):
        if path is not None:
            check_input_file(path, flag)
    _setup_logging()
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = TrainConfig(
        train_data=str(train_data),
        val_data=str(val_data) if val_data else None,
        tokenizer=str(tokenizer) if tokenizer else None,
        checkpoint_dir=str(checkpoint_dir),
        mode=mode,
        dim=dim,
        n_layers=layers,
        n_heads=heads,
        seq_len=seq_len,
        epochs=epochs,
        max_steps=max_steps,
        cortex_blocks=[PassThroughBlockConfig(cell=LSTMCellConfig())] if cortex_lstm else [],
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        stm_capacity=stm_capacity,
        ltm_capacity=ltm_capacity,
        save_every=save_every,
        seed=seed,
        wandb=wandb,
        progress=True,
    )
    try:
        trainer = Trainer(cfg, resume=resolve_resume(resume, str(checkpoint_dir)))
    except ImportError as e:
        console.print(f"[red]{e}")
        raise typer.Exit(1) from None
    start = trainer.step
    hist = trainer.fit()
    done = [h for h in hist if h["step"] >= start]
    if done:
        console.print(
            f"steps {start}..{trainer.step}: loss {done[0]['loss']:.4f} -> {done[-1]['loss']:.4f}; "
            f"rollbacks {trainer.rollbacks}; checkpoints in {checkpoint_dir}"
        )


def _load(checkpoint: Path):
    from .model import load_pretrained

    model = load_pretrained(checkpoint)
    model.eval()
    if model.tokenizer is None:
        from .tokenizer import ByteTokenizer

        if model.config.vocab_size != ByteTokenizer().vocab_size:
            raise typer.BadParameter(
                f"{checkpoint} has no tokenizer/ and vocab {model.config.vocab_size} "
                f"is not the byte vocab {ByteTokenizer().vocab_size}"
            )
        model.tokenizer = ByteTokenizer()
    return model


@app.command()
def generate(
    checkpoint: Path = typer.Option(..., "--checkpoint"),
    prompt: str = typer.Option(..., "--prompt"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy"),
    top_k: int = typer.Option(0, "--top-k"),
    top_p: float = typer.Option(1.0, "--top-p"),
    learn: list[str] = typer.Option([], "--learn", help="text to learn before generating (repeatable)"),
    save_memory: bool = typer.Option(False, "--save-memory", help="persist the memory back to the checkpoint"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Generate a continuation of --prompt (memory is read at every step)."""
    import torch

    from .generate import generate as run_generate

    model = _load(checkpoint)
    for text in learn:
        model.learn(text)
    g = torch.Generator().manual_seed(seed)
    out = run_generate(
        model,
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=g,
    )
    console.print(prompt + out, markup=False, highlight=False)
    if save_memory:
        model.memory.save(checkpoint / "memory")


@app.command()
def chat(
    checkpoint: Path = typer.Option(..., "--checkpoint"),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature"),
    top_k: int = typer.Option(0, "--top-k"),
    top_p: float = typer.Option(1.0, "--top-p"),
) -> None:
    """Interactive: every line is learned, then answered; /stats shows memory; memory is saved on exit."""
    import torch

    from .generate import generate as run_generate

    model = _load(checkpoint)
    g = torch.Generator().manual_seed(0)
    console.print("cortex lm chat: type text; /stats for memory stats; /exit or Ctrl-D to quit")
    try:
        while True:
            try:
                line = input("> ")
            except EOFError:
                break
            line = line.strip()
            if line in ("/exit", "/quit"):
                break
            if line == "/stats":
                console.print_json(json.dumps(model.get_stats()))
                continue
            if not line:
                continue
            if len(model.tokenizer.encode(line)) >= 2:
                model.learn(line)
            reply = run_generate(
                model,
                line,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=g,
            )
            model.observe(line + reply)
            console.print(reply.strip() or "(no reply)", markup=False, highlight=False)
    finally:
        model.memory.save(checkpoint / "memory")
        console.print(f"memory saved to {checkpoint / 'memory'}")
