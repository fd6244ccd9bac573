"""Every loader, fed corrupted, truncated, empty and wrong-type files: it loads, or it raises one error type
(``CheckpointError``, a ``ValueError``; ``CheckpointNotFoundError`` for a missing file) whose message is one line
naming the file. Never another exception, never a traceback.

Default (CI) profile: 30 cases per loader. ``CORTEX_FUZZ_PROFILE=thorough``: 1000 per loader (the issue's goal).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from cortexmem.utils.io import CheckpointError

from . import artifacts as A

pytestmark = pytest.mark.fuzz


def _load_stack(d: Path) -> None:
    from cortexmem import load_stack

    load_stack(d)


def _load_lm(d: Path) -> None:
    from cortexmem.lm.model import load_pretrained

    load_pretrained(d)


def _load_memory(d: Path) -> None:
    from cortexmem.lm.memory import MemorySystem

    MemorySystem.load(d / "memory")


def _resume_lm(d: Path) -> None:
    from cortexmem.lm.train import TrainConfig, Trainer

    meta = json.loads(_PRISTINE["lm"].joinpath("trainer.json").read_text())
    Trainer(TrainConfig.model_validate(meta["train_config"]), resume=d, device="cpu")


def _token_data(d: Path) -> None:
    from cortexmem.lm.data import TokenData

    TokenData(d / "train.bin", 8)


def _load_ppo(d: Path) -> None:
    from cortexmem.rl.ppo import PPOTrainer

    PPOTrainer.load(d)


def _load_adapter(d: Path) -> None:
    from cortexmem.llm import load_with_memory

    load_with_memory(str(_PRISTINE["llm"][0]), adapter=d)


def _sessions(d: Path) -> None:
    from cortexmem.llm.sessions import SessionNotFoundError, SessionStore

    store = SessionStore(d / "sessions.db", create=False)
    store.list()
    try:
        store.load("alice")
    except SessionNotFoundError:
        pass


def _stack_json(d: Path) -> None:
    from cortexmem.rl.stacks import resolve_stack

    resolve_stack(str(d / "stack.json"), 4)


def _results(d: Path) -> None:
    from cortexmem.evals.report import load_results

    load_results(d / "results.json")


_PRISTINE: dict = {}

#: loader -> (artifact name, function, files it may damage (relative, glob))
LOADERS = {
    "stack": ("stack", _load_stack, "*"),
    "lm_model": ("lm", _load_lm, "model.*"),
    "lm_memory": ("lm", _load_memory, "memory/*"),
    "lm_resume": ("lm", _resume_lm, "*"),
    "prepared_data": ("data", _token_data, "train.bin*"),
    "ppo": ("ppo", _load_ppo, "*"),
    "llm_adapter": ("adapter", _load_adapter, "memory/*"),
    "sessions": ("db", _sessions, "sessions.db*"),
    "rl_stack_json": ("stack_json", _stack_json, "stack.json"),
    "eval_results": ("results", _results, "results.json"),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    _PRISTINE["lm"] = A.lm_checkpoint(root)
    _PRISTINE["data"] = root / "data"
    _PRISTINE["stack"] = A.stack_dir(root)
    db = A.session_store(root)
    _PRISTINE["db"] = db.parent / "db"
    _PRISTINE["db"].mkdir()
    for p in db.parent.glob("sessions.db*"):
        p.rename(_PRISTINE["db"] / p.name)
    _PRISTINE["ppo"] = A.ppo_checkpoint(root)
    base, run = A.adapter_run(root)
    _PRISTINE["llm"] = (base, run)
    _PRISTINE["adapter"] = run
    sj = root / "stack_json"
    sj.mkdir()
    (sj / "stack.json").write_text((_PRISTINE["stack"] / "config.json").read_text())
    _PRISTINE["stack_json"] = sj
    res = root / "results"
    res.mkdir()
    (res / "results.json").write_text(json.dumps(_results_obj()))
    _PRISTINE["results"] = res
    return root


def _results_obj() -> dict:
    from cortexmem.evals.schema import EvalResults, EvalSettings

    settings = EvalSettings(tasks=["majority"], stacks=["lstm"], epochs=1, batch_size=1, lr=1e-3, weight_decay=0.0,
                            seed=0, d_hidden=4, train_size=1, test_size=1, grad_clip=1.0, device="cpu")
    return EvalResults(created="2026-01-01T00:00:00", cortexmem_version="0", torch_version="0", device="cpu",
                       world_size=1, wall_time_s=0.0, settings=settings, runs=[], skipped=[]).model_dump(mode="json")


def _case(rng: random.Random, work: Path, pattern: str) -> str:
    files = [p for p in A.files_of(work) if p.match(pattern) or p.relative_to(work).match(pattern)]
    target = rng.choice(files)
    if target.suffix == ".json" and rng.random() < 0.3:
        A.json_edit(target, rng)
        return "json_edit"
    kind = rng.choice(A.KINDS)
    A.corrupt(target, kind, rng)
    return kind


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_fuzz_loader(pristine, tmp_path, loader):
    name, fn, pattern = LOADERS[loader]
    fn(_PRISTINE[name])  # the pristine artifact loads
    rng = random.Random(f"{loader}-25")
    outcomes: Counter = Counter()
    for i in range(A.fuzz_cases()):
        work = A.copy_tree(_PRISTINE[name], tmp_path / "w")
        kind = _case(rng, work, pattern)
        try:
            fn(work)
            outcomes["loaded"] += 1
        except CheckpointError as e:
            msg = str(e)
            assert msg and "\n" not in msg, (loader, i, kind, msg)
            assert str(work) in msg or work.name in msg, (loader, i, kind, msg)
            outcomes["CheckpointError"] += 1
        except Exception as e:  # noqa: BLE001 - anything else is the failure this suite looks for
            raise AssertionError(f"{loader} case {i} ({kind}): {type(e).__name__}: {e}") from e
    assert outcomes["CheckpointError"] > 0, outcomes
