"""Checkpoint plumbing of the LM trainer: optimizer state and RNG state as safetensors + JSON, and folders
published atomically (``renameat2`` exchange on Linux, a recoverable two-rename fallback elsewhere)."""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..utils.io import CheckpointNotFoundError, fsync_dir


def flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` -> (tensors for safetensors, everything else as JSON)."""
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = val
            else:
                scalars.setdefault(str(pid), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = t
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    return tensors, {
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": [version, list(mt), gauss_next],
    }


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, keys, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, np.array(keys, np.uint32), pos, has_gauss, gauss))
    version, mt, gauss_next = meta["python"]
    random.setstate((version, tuple(mt), gauss_next))


def publish_dir(tmp: Path, final: Path) -> Path:
    """Make the finished directory ``tmp`` the real folder ``final`` in one atomic step, then drop the old one.

    On Linux the two paths are exchanged with ``renameat2(RENAME_EXCHANGE)``, so ``final`` is never missing;
    elsewhere the old folder is first moved aside, and :func:`recover_checkpoint` puts it back if a crash falls
    in between.
    A symlink ``final`` (the older layout) is replaced by the folder and its target removed.
    """
    old: Path | None = None
    if final.is_symlink():
        target = os.readlink(final)
        os.replace(tmp, final)
        if "/" not in target:
            old = final.parent / target
    elif final.exists():
        if exchange_paths(tmp, final):
            old = tmp
        else:
            old = final.with_name(f"{tmp.name}.old")
            os.replace(final, old)
            os.replace(tmp, final)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where the system cannot."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def recover_checkpoint(root: Path, name: str) -> None:
    """If a crash left no ``<name>`` folder between the two renames of the fallback, restore the newest whole one."""
    final = root / name
    if final.exists() or final.is_symlink() or not root.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{32}}(\.old)?")
    whole = [p for p in root.iterdir() if pattern.fullmatch(p.name) and (p / "trainer.json").is_file()]
    if whole:
        best = min(whole, key=lambda p: (p.name.endswith(".old"), -p.stat().st_mtime))
        os.replace(best, final)
        fsync_dir(root)


def remove_stale(root: Path, name: str) -> None:
    """Delete hidden directories of ``name`` left by a writer that crashed before publishing."""
    recover_checkpoint(root, name)
    live = os.readlink(root / name) if (root / name).is_symlink() else None
    pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{32}}(\.link|\.legacy|\.old)?")
    for p in root.iterdir():
        if pattern.fullmatch(p.name) and p.name != live:
            if p.is_symlink() or p.is_file():
                p.unlink(missing_ok=True)
            else:
                shutil.rmtree(p, ignore_errors=True)


def resolve_resume(resume: str | None, checkpoint_dir: str) -> Path | None:
    """``auto`` -> ``<checkpoint_dir>/last`` when it exists; a path -> that path; ``None`` -> fresh start."""
    if resume is None:
        return None
    if resume == "auto":
        root = Path(checkpoint_dir)
        if root.is_dir():
            recover_checkpoint(root, "last")
        last = root / "last"
        return last if (last / "trainer.json").exists() else None
    p = Path(resume)
    if not p.exists():
        raise CheckpointNotFoundError(f"--resume {resume}: no such checkpoint folder")
    if not (p / "trainer.json").is_file():
        raise CheckpointNotFoundError(f"--resume {resume}: not an LM checkpoint folder (no trainer.json there)")
    return p
