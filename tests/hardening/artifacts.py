"""Small valid artifacts of every loader (LM, RL, stack, LLM adapter, sessions, prepared data) and the ways to
break them, shared by the one-line CLI tests and the loader fuzz suite."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

VOCAB = 64


def lm_checkpoint(root: Path) -> Path:
    """``root/ck/last``: a tiny LM checkpoint written by the trainer (model, memory, trainer state)."""
    from cortexmem.lm.data import prepare, write_demo_data
    from cortexmem.lm.tokenizer import ByteTokenizer
    from cortexmem.lm.train import TrainConfig, Trainer

    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    write_demo_data(data / "demo.jsonl", 40, 0)
    prepare(data / "demo.jsonl", data / "train.bin", ByteTokenizer(), val_fraction=0.2)
    cfg = TrainConfig(train_data=str(data / "train.bin"), checkpoint_dir=str(root / "ck"), dim=16, n_layers=1,
                      n_heads=2, seq_len=8, batch_size=2, max_steps=1, save_every=1000, stm_capacity=4,
                      ltm_capacity=16)
    tr = Trainer(cfg, device="cpu")
    tr.fit()
    tr.save_checkpoint("last")
    return root / "ck" / "last"


def stack_dir(root: Path) -> Path:
    from cortexmem import CortexStackConfig, LSTMCellConfig, PassThroughBlockConfig, build_cortex

    d = root / "stack"
    build_cortex(CortexStackConfig(d_hidden=4, blocks=[PassThroughBlockConfig(cell=LSTMCellConfig())])).save(d)
    return d


def session_store(root: Path) -> Path:
    from tensordict import TensorDict

    from cortexmem.llm.sessions import Fingerprint, SessionStore

    db = root / "sessions.db"
    SessionStore(db).save("alice", TensorDict({"x": torch.ones(1, 3)}, batch_size=[1]),
                          fingerprint=Fingerprint("b", "a"), tokens_seen=3)
    return db


def adapter_run(root: Path) -> tuple[Path, Path]:
    """``(base folder, run folder)`` with ``run/memory`` an adapter of a tiny HF base (no download)."""
    from cortexmem.llm import load_with_memory
    from tests.llm.helpers import small_memory, tiny_base

    base = root / "base"
    tiny_base().save_pretrained(base)
    run = root / "run"
    load_with_memory(str(base), small_memory()).save_memory(run / "memory")
    return base, run


def ppo_checkpoint(root: Path) -> Path:
    from cortexmem.rl.ppo import PPOConfig, PPOTrainer

    cfg = PPOConfig(env="cortexmem/RepeatK-v0", stack="lstm", frames=16, num_envs=2, rollout_len=8, d_hidden=8,
                    epochs=1, minibatches=1)
    tr = PPOTrainer(cfg, root / "rl")
    tr.train(progress=False)
    return tr.save(root / "rl")


# ---- the ways a file goes bad --------------------------------------------------------------------------------
def corrupt(path: Path, kind: str, rng: random.Random) -> None:
    """Damage ``path`` in place: random bytes, truncated, empty, a directory, bad UTF-8, bad JSON, wrong JSON type,
    one flipped byte, or extra bytes appended."""
    data = path.read_bytes() if path.is_file() else b""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if kind == "random":
        path.write_bytes(rng.randbytes(rng.randint(1, 256)))
    elif kind == "truncated":
        path.write_bytes(data[: rng.randint(1, max(1, len(data) - 1))])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "missing":
        pass
    elif kind == "bad_utf8":
        path.write_bytes(b'{"a": "\xe0\x80"}')
    elif kind == "bad_json":
        path.write_text('{"format": ')
    elif kind == "wrong_type":
        path.write_text(rng.choice(["[1, 2]", '"text"', "3", "null", "true"]))
    elif kind == "flip":
        b = bytearray(data or b"x")
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(b))
    elif kind == "append":
        path.write_bytes(data + rng.randbytes(rng.randint(1, 64)))
    elif kind == "header_len":
        # a safetensors header length far beyond the file
        path.write_bytes((2**40).to_bytes(8, "little") + data[8:])
    else:
        raise ValueError(kind)


KINDS = ("random", "truncated", "empty", "directory", "missing", "bad_utf8", "bad_json", "wrong_type", "flip",
         "append", "header_len")


def json_edit(path: Path, rng: random.Random) -> None:
    """A well-formed JSON file with one value replaced by something of the wrong type or a missing key."""
    obj = json.loads(path.read_text())
    if isinstance(obj, dict) and obj:
        key = rng.choice(sorted(obj))
        choice = rng.randrange(3)
        if choice == 0:
            del obj[key]
        else:
            obj[key] = rng.choice([None, -1, "x", [], {}, 1e308, True])
    path.write_text(json.dumps(obj))


def files_of(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))


def copy_tree(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=False)
    return dst


def fuzz_cases() -> int:
    """Cases per loader: ``CORTEX_FUZZ_PROFILE=thorough`` -> 1000, default (CI) -> 30."""
    return 1000 if os.environ.get("CORTEX_FUZZ_PROFILE", "").lower() == "thorough" else 30
