"""Session store: fuzzed ids and payloads, SIGKILL during writes, and 4 processes reading/writing at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import stat
import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tensordict import TensorDict

from cortexmem.llm.sessions import Fingerprint, SessionNotFoundError, SessionStore
from cortexmem.utils.paths import safe_name

FP = Fingerprint("base", "adapter")
BAD_IDS = ["../x", "/etc/passwd", "a\x00b", "..", "a/b", "a\\b", ".hidden", "x" * 201, "", " ", "ok\n",
           "x'); DROP TABLE sessions; --", "séance", "a..b"]
IDS = st.one_of(st.sampled_from(["a", "b", "user@1", "s-2.v=3+x", "x" * 200]), st.sampled_from(BAD_IDS),
                st.text(max_size=12), st.integers(-3, 3), st.none(), st.binary(max_size=4))
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.int8, torch.bool]


def _valid(sid) -> bool:
    try:
        safe_name(sid)
    except (TypeError, ValueError):
        return False
    return True


@st.composite
def payloads(draw):
    """A TensorDict (maybe nested, maybe empty, any dtype) or something that is not one."""
    kind = draw(st.sampled_from(["td", "td", "td", "dict", "tensor", "none"]))
    if kind == "dict":
        return {"x": torch.zeros(1)}
    if kind == "tensor":
        return torch.zeros(2, 3)
    if kind == "none":
        return None
    batch = draw(st.integers(0, 3))
    td = TensorDict({}, batch_size=[batch])
    for name in draw(st.lists(st.sampled_from(["S", "conv", "n", "layer_0/S", "layer_0/m", "b/c/d", "x.y", "b/e.f"]),
                              max_size=4, unique=True)):
        shape = (batch, *draw(st.lists(st.integers(0, 3), max_size=3)))
        dtype = draw(st.sampled_from(DTYPES))
        t = (torch.arange(int(torch.tensor(shape).prod()), dtype=torch.float64).reshape(shape) * draw(
            st.floats(-1e3, 1e3, allow_nan=False, width=32))).to(dtype)
        key = tuple(name.split("/"))
        if len(key) > 1 and key[0] in td.keys() and not isinstance(td.get(key[0]), TensorDict):
            continue
        td.set(key, t)
    return td


def _same(a: TensorDict, b: TensorDict) -> bool:
    fa, fb = a.flatten_keys("."), b.flatten_keys(".")
    return (set(fa.keys()) == set(fb.keys()) and a.batch_size == b.batch_size
            and all(fa[k].dtype == fb[k].dtype and torch.equal(fa[k], fb[k]) for k in fa.keys()))


OPS = st.lists(st.tuples(st.sampled_from(["save", "load", "info", "delete", "export", "exists", "list"]),
                         IDS, payloads()), min_size=1, max_size=6)


@pytest.mark.fuzz
@given(ops=OPS)
def test_fuzz_session_store_calls(tmp_path_factory, ops):
    root = tmp_path_factory.mktemp("store")
    store = SessionStore(root / "db" / "s.db")
    model: dict[str, TensorDict] = {}
    for op, sid, payload in ops:
        try:
            if op == "save":
                store.save(sid, payload, fingerprint=FP, tokens_seen=3)
                model[sid] = payload.clone()
            elif op == "load":
                state, info = store.load(sid, fingerprint=FP)
                assert _same(state, model[sid]) and info.session_id == sid
            elif op == "info":
                assert store.info(sid).session_id == sid
            elif op == "delete":
                assert store.delete(sid) == (model.pop(sid, None) is not None)
            elif op == "export":
                out = store.export(sid, root / "out.safetensors")
                assert stat.S_IMODE(out.stat().st_mode) == 0o600
                store.delete(sid)
                store.import_file(out)
                assert _same(store.load(sid)[0], model[sid])
            elif op == "exists":
                assert store.exists(sid) == (sid in model)
            else:
                assert {i.session_id for i in store.list()} == set(model)
        except SessionNotFoundError as e:
            assert _valid(sid) and sid not in model and repr(sid) in str(e)
        except (TypeError, ValueError) as e:
            msg = str(e)
            if not _valid(sid):
                assert "session_id" in msg and ("got" in msg or "escapes" in msg)
            else:
                assert op == "save" and ("TensorDict" in msg or "'.'" in msg), msg
        else:
            assert _valid(sid) or op == "list", f"{op} accepted the unsafe id {sid!r}"
    # nothing was written outside the store's own files, all private
    names = {p.relative_to(root).as_posix() for p in root.rglob("*")}
    assert all(n == "db" or n.startswith("db/s.db") or n == "out.safetensors" for n in names), names
    for p in (root / "db").rglob("*"):
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert {i.session_id for i in store.list()} == set(model)


# --- crash safety ------------------------------------------------------------------------------------------
KILLS = 40
N_IDS = 5


def _state(v: int, batch: int = 2) -> TensorDict:
    return TensorDict({"layer_0": TensorDict({"S": torch.full((batch, 4, 8), float(v)),
                                              "n": torch.full((batch, 8), float(v))}, batch_size=[batch]),
                       "conv": torch.full((batch, 3, 8), float(v))}, batch_size=[batch])


def _check_state(state: TensorDict, v: int) -> None:
    flat = state.flatten_keys(".")
    assert set(flat.keys()) == {"layer_0.S", "layer_0.n", "conv"}
    assert all(torch.all(t == float(v)) for t in flat.values()), f"session mixes versions (expected {v})"


def _crash_writer(db: str, log: str, start: int) -> None:
    torch.set_num_threads(1)
    store = SessionStore(db)
    v = start
    with open(log, "a") as f:
        while True:
            v += 1
            store.save(f"s{v % N_IDS}", _state(v), fingerprint=FP, tokens_seen=v)
            f.write(f"{v}\n")
            f.flush()


def test_sigkill_during_session_writes_never_loses_a_commit(tmp_path):
    db, log = tmp_path / "sessions.db", tmp_path / "log"
    log.write_text("")
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(0)
    for _ in range(KILLS):
        logged = [int(x) for x in log.read_text().split()]
        # a version whose commit raced its log line is committed too: never reuse it
        start = (max(logged) + 1) if logged else 0
        proc = ctx.Process(target=_crash_writer, args=(str(db), str(log), start))
        proc.start()
        time.sleep(rng.uniform(0.02, 0.25))
        proc.kill()  # SIGKILL at a random point, often inside save()
        proc.join()
        committed = [int(x) for x in log.read_text().split()]
        store = SessionStore(db)  # must always open
        last: dict[str, int] = {}
        for v in committed:
            last[f"s{v % N_IDS}"] = v
        have = {i.session_id: i for i in store.list()}
        for sid, v in last.items():
            assert sid in have, f"committed session {sid} lost"
            state, info = store.load(sid, fingerprint=FP)
            # the newest logged value, or a newer one whose commit landed before the log line
            assert info.tokens_seen >= v, f"{sid}: committed {v}, store has older {info.tokens_seen}"
            _check_state(state, info.tokens_seen)
        for sid, info in have.items():
            _check_state(store.load(sid)[0], info.tokens_seen)
    n = len(log.read_text().split())
    print(f"session store: {KILLS} kill points, {n} committed saves, 0 lost")
    assert n >= KILLS, "the writer hardly committed anything: kills came too early"
    store.remove_orphans(older_than_s=0.0)
    blobs = {p.name for p in store.blob_dir.glob("*.safetensors")}
    assert len(blobs) == len(store.list())


# --- concurrency -------------------------------------------------------------------------------------------
WORKERS, SECONDS = 4, 5.0


def _worker(db: str, wid: int, out: str) -> None:
    """Mixed ops; own ids are checked exactly, shared ids must always be one whole version."""
    torch.set_num_threads(1)
    store, rng = SessionStore(db), random.Random(wid)
    own: dict[str, int] = {}
    ops, err, v = 0, None, 0
    deadline = time.monotonic() + SECONDS
    try:
        while time.monotonic() < deadline:
            op = rng.random()
            v += 1
            value = wid * 1_000_000 + v
            sid = f"w{wid}-{rng.randrange(3)}"
            shared = f"shared-{rng.randrange(2)}"
            if op < 0.3:
                store.save(sid, _state(value, 1), fingerprint=FP, tokens_seen=value)
                own[sid] = value
            elif op < 0.5:
                store.save(shared, _state(value, 1), fingerprint=FP, tokens_seen=value)
            elif op < 0.7:
                if sid in own:
                    state, info = store.load(sid)
                    assert info.tokens_seen == own[sid], f"{sid}: read {info.tokens_seen}, wrote {own[sid]}"
                    _check_state(state, own[sid])
                else:
                    assert not store.exists(sid)
            elif op < 0.85:
                try:
                    state, info = store.load(shared)
                    _check_state(state, info.tokens_seen)
                except SessionNotFoundError:
                    pass
            elif op < 0.95:
                names = {i.session_id for i in store.list()}
                assert set(own) <= names
            else:
                assert store.delete(sid) == (own.pop(sid, None) is not None)
            ops += 1
    except Exception as e:  # reported to the parent, which fails the test with it
        err = f"{type(e).__name__}: {e}"
    with open(out, "w") as f:
        json.dump({"ops": ops, "own": own, "error": err}, f)


def test_four_processes_mixed_reads_writes(tmp_path, record_property):
    db = tmp_path / "sessions.db"
    SessionStore(db)
    ctx = multiprocessing.get_context("fork")
    outs = [tmp_path / f"w{i}.json" for i in range(WORKERS)]
    procs = [ctx.Process(target=_worker, args=(str(db), i, str(outs[i]))) for i in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=SECONDS + 60)
        assert p.exitcode == 0
    results = [json.loads(o.read_text()) for o in outs]
    assert [r["error"] for r in results] == [None] * WORKERS
    store = SessionStore(db)
    for r in results:  # every committed write of every worker is there, whole
        for sid, value in r["own"].items():
            state, info = store.load(sid, fingerprint=FP)
            assert info.tokens_seen == value
            _check_state(state, value)
    own_ids = {sid for r in results for sid in r["own"]}
    assert {i.session_id for i in store.list()} - {"shared-0", "shared-1"} == own_ids
    total = sum(r["ops"] for r in results)
    record_property("session_concurrency_ops", total)
    print(f"session store concurrency: {WORKERS} processes, {SECONDS:.0f} s, {total} operations")
    assert total > WORKERS * 10
    assert os.stat(db).st_mode & 0o077 == 0
