"""``SessionStore``: memory states per ``session_id`` in an SQLite index (WAL) plus safetensors blobs.

Each save writes a new blob under a unique name (atomic rename, mode 0600), then swaps the row in one
``BEGIN IMMEDIATE`` transaction and only afterwards removes the old blob, so readers in other processes always
find either the old or the new state, never a torn one. ``expected_version`` gives optimistic concurrency.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict

from ..utils.io import (
    CheckpointError,
    atomic_write_bytes,
    load_safetensors_checked,
    one_line,
    read_bytes,
    safetensors_metadata,
)
from ..utils.paths import safe_name

_FORMAT = "cortexmem-session-1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    base_fingerprint TEXT NOT NULL,
    adapter_fingerprint TEXT NOT NULL,
    tokens_seen INTEGER NOT NULL,
    batch INTEGER NOT NULL,
    blob TEXT NOT NULL,
    nbytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    version INTEGER NOT NULL,
    meta TEXT NOT NULL
)
"""


class SessionNotFoundError(KeyError):
    """No session with that id in the store."""


class SessionMismatchError(ValueError):
    """The stored session was written by a different base model or memory adapter."""


class SessionConflictError(RuntimeError):
    """Another writer updated the session since it was loaded (``expected_version`` check failed)."""


@dataclass(frozen=True)
class Fingerprint:
    """Identity of the model a state belongs to: base weights/config and sidecar adapter."""

    base: str
    adapter: str

    @property
    def combined(self) -> str:
        return hashlib.sha256(f"{self.base}:{self.adapter}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    tokens_seen: int
    fingerprint: str
    base_fingerprint: str
    adapter_fingerprint: str
    batch: int
    nbytes: int
    created_at: float
    updated_at: float
    version: int
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_store_path() -> Path:
    """``$CORTEXMEM_SESSIONS`` or ``~/.cache/cortexmem/sessions.db``."""
    env = os.environ.get("CORTEXMEM_SESSIONS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cortexmem" / "sessions.db"


class SessionStore:
    """Persistent, multi-process-safe store of memory states keyed by ``session_id``."""

    def __init__(self, path: str | os.PathLike | None = None, *, timeout: float = 60.0, create: bool = True) -> None:
        """Open (or with ``create`` make) the store; ``create=False`` never writes: a missing store is empty."""
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        self.blob_dir = self.path.parent / f"{self.path.name}.blobs"
        self.timeout = timeout
        if self.path.is_dir():
            raise CheckpointError(f"session store {self.path} is a directory, expected an SQLite file")
        self.absent = not create and not self.path.exists()
        if self.absent:
            return
        if not create:
            with self._connect() as conn:
                conn.execute("SELECT 1 FROM sessions LIMIT 1").fetchall()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.blob_dir.mkdir(mode=0o700, exist_ok=True)
        if not self.path.exists():
            # create the file ourselves so it (and SQLite's -wal/-shm, which copy its mode) is 0600
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)

    def __repr__(self) -> str:
        return f"SessionStore({str(self.path)!r})"

    # --- connection -----------------------------------------------------------------------------
    def _connect(self) -> _Conn:
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as e:
            raise _store_error(self.path, e) from None
        return _Conn(conn, self.path)

    # --- API ------------------------------------------------------------------------------------
    def save(
        self, session_id: str, state: TensorDict, *, fingerprint: Fingerprint, tokens_seen: int,
        meta: dict[str, Any] | None = None, expected_version: int | None = None,
    ) -> SessionInfo:
        """Store ``state`` under ``session_id``; with ``expected_version`` fail if someone else wrote since."""
        _check_id(session_id)
        if not isinstance(state, TensorDict):
            raise TypeError(f"state must be a TensorDict, got {type(state).__name__}")
        dotted = [k for k in state.keys(include_nested=True) if any("." in p for p in _key_parts(k))]
        if dotted:
            raise ValueError(f"state keys must not contain '.' (it joins nested keys on disk), got {dotted[0]!r}")
        if not isinstance(tokens_seen, int) or tokens_seen < 0:
            raise ValueError(f"tokens_seen must be an int >= 0, got {tokens_seen!r}")
        meta = dict(meta or {})
        batch = int(state.batch_size[0]) if len(state.batch_size) else 1
        blob_name = f"{hashlib.sha256(session_id.encode()).hexdigest()[:16]}-{uuid.uuid4().hex}.safetensors"
        data = _serialise(state, {"format": _FORMAT, "session_id": session_id, "batch": str(batch),
                                  "fingerprint": fingerprint.combined, "tokens_seen": str(tokens_seen)})
        atomic_write_bytes(self.blob_dir / blob_name, data, mode=0o600)
        now = time.time()
        old_blob = None
        try:
            with self._connect() as conn:
                conn.execute("BEGIN IMMEDIATE")
                row = conn.execute(
                    "SELECT version, blob, created_at FROM sessions WHERE session_id = ?", (session_id,)
                ).fetchone()
                have = 0 if row is None else row[0]
                if expected_version is not None and have != expected_version:
                    conn.execute("ROLLBACK")
                    raise SessionConflictError(
                        f"session {session_id!r} is at version {have}, expected {expected_version}: another "
                        f"writer updated it; reload and retry"
                    )
                created = now if row is None else row[2]
                old_blob = None if row is None else row[1]
                conn.execute(
                    "INSERT OR REPLACE INTO sessions (session_id, fingerprint, base_fingerprint, "
                    "adapter_fingerprint, tokens_seen, batch, blob, nbytes, created_at, updated_at, version, meta) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (session_id, fingerprint.combined, fingerprint.base, fingerprint.adapter, tokens_seen, batch,
                     blob_name, len(data), created, now, have + 1, json.dumps(meta)),
                )
                conn.execute("COMMIT")
        except BaseException:
            _unlink(self.blob_dir / blob_name)
            raise
        if old_blob is not None and old_blob != blob_name:
            _unlink(self.blob_dir / old_blob)
        return self.info(session_id)

    def info(self, session_id: str) -> SessionInfo:
        """Metadata of one session (``SessionNotFoundError`` if absent)."""
        _check_id(session_id)
        if self.absent:
            raise SessionNotFoundError(f"no session {session_id!r} in {self.path} (no store there)")
        with self._connect() as conn:
            row = conn.execute(_SELECT_ONE, (session_id,)).fetchone()
        if row is None:
            raise SessionNotFoundError(f"no session {session_id!r} in {self.path}")
        return _info(row)

    def exists(self, session_id: str) -> bool:
        _check_id(session_id)
        if self.absent:
            return False
        with self._connect() as conn:
            return conn.execute("SELECT 1 FROM sessions WHERE session_id = ?", (session_id,)).fetchone() is not None

    def load(
        self, session_id: str, *, fingerprint: Fingerprint | None = None, device: Any = None
    ) -> tuple[TensorDict, SessionInfo]:
        """``(state, info)``; with ``fingerprint`` a state from another model raises ``SessionMismatchError``."""
        for _ in range(20):
            info = self.info(session_id)
            if fingerprint is not None and info.fingerprint != fingerprint.combined:
                what = "base model" if info.base_fingerprint != fingerprint.base else "memory adapter"
                raise SessionMismatchError(
                    f"session {session_id!r} was written by a different {what} (fingerprint "
                    f"{info.fingerprint}, this model has {fingerprint.combined}); use reset_session=True or "
                    f"another session id"
                )
            try:
                blob = self.blob_dir / self._blob_name(session_id, info)
                data = blob.read_bytes()
            except FileNotFoundError:
                # a concurrent writer replaced the blob between our two reads; read the row again
                time.sleep(0.01)
                continue
            return _deserialise(data, info.batch, device, blob), info
        raise RuntimeError(f"session {session_id!r}: blob kept disappearing under concurrent writes")

    def _blob_name(self, session_id: str, info: SessionInfo) -> str:
        with self._connect() as conn:
            row = conn.execute("SELECT blob FROM sessions WHERE session_id = ? AND version = ?",
                               (session_id, info.version)).fetchone()
        if row is None:
            raise FileNotFoundError(session_id)
        return row[0]

    def list(self) -> list[SessionInfo]:
        """All sessions, most recently updated first."""
        if self.absent:
            return []
        with self._connect() as conn:
            rows = conn.execute(_SELECT_ALL).fetchall()
        return [_info(r) for r in rows]

    def delete(self, session_id: str) -> bool:
        """Remove a session; ``False`` if it did not exist."""
        _check_id(session_id)
        if self.absent:
            return False
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT blob FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
            conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
            conn.execute("COMMIT")
        if row is None:
            return False
        _unlink(self.blob_dir / row[0])
        return True

    def export(self, session_id: str, path: str | os.PathLike) -> Path:
        """Write one session to a standalone safetensors file (metadata carries id, fingerprint, tokens)."""
        state, info = self.load(session_id)
        meta = {"format": _FORMAT, "session_id": session_id, "batch": str(info.batch),
                "fingerprint": info.fingerprint, "base_fingerprint": info.base_fingerprint,
                "adapter_fingerprint": info.adapter_fingerprint, "tokens_seen": str(info.tokens_seen),
                "meta": json.dumps(info.meta)}
        path = Path(path)
        atomic_write_bytes(path, _serialise(state, meta), mode=0o600)
        return path

    def import_file(self, path: str | os.PathLike, session_id: str | None = None) -> SessionInfo:
        """Add a file written by ``export`` (under its own id unless ``session_id`` is given)."""
        meta = safetensors_metadata(path, "session export")
        if meta.get("format") != _FORMAT:
            raise CheckpointError(f"{path} is not a cortexmem session export (format {meta.get('format')!r})")
        try:
            batch, tokens = int(meta["batch"]), int(meta["tokens_seen"])
            fp = Fingerprint(meta["base_fingerprint"], meta["adapter_fingerprint"])
            extra = json.loads(meta.get("meta", "{}"))
            sid = session_id or meta["session_id"]
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"session export {path} has bad metadata ({one_line(e)})") from None
        if not isinstance(extra, dict):
            raise CheckpointError(f"session export {path}: 'meta' must be a JSON object")
        state = _deserialise(read_bytes(path, "session export"), batch, None, Path(path))
        return self.save(sid, state, fingerprint=fp, tokens_seen=tokens, meta=extra)

    def remove_orphans(self, older_than_s: float = 3600.0) -> int:
        """Delete blobs no row points to (left by crashed writers) older than ``older_than_s``."""
        with self._connect() as conn:
            used = {r[0] for r in conn.execute("SELECT blob FROM sessions").fetchall()}
        cutoff, removed = time.time() - older_than_s, 0
        for p in self.blob_dir.glob("*.safetensors"):
            if p.name not in used and p.stat().st_mtime < cutoff:
                _unlink(p)
                removed += 1
        return removed


# literal SQL only (tests/hardening/test_security_scan.py): values always go through "?" placeholders
_SELECT_ONE = ("SELECT session_id, tokens_seen, fingerprint, base_fingerprint, adapter_fingerprint, batch, nbytes, "
               "created_at, updated_at, version, meta FROM sessions WHERE session_id = ?")
_SELECT_ALL = ("SELECT session_id, tokens_seen, fingerprint, base_fingerprint, adapter_fingerprint, batch, nbytes, "
               "created_at, updated_at, version, meta FROM sessions ORDER BY updated_at DESC")


class _Conn:
    """Context manager that always closes the sqlite connection (sqlite3's own one only commits) and reports a
    database fault as one ``CheckpointError`` line naming the store."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn, self.path = conn, path

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        finally:
            self.conn.close()
        if exc_type is not None and issubclass(exc_type, sqlite3.DatabaseError):
            raise _store_error(self.path, exc) from None


def _store_error(path: Path, err: Exception) -> CheckpointError:
    msg = one_line(err)
    if isinstance(err, sqlite3.OperationalError) and "locked" in msg:
        return CheckpointError(f"session store {path}: {msg}")
    return CheckpointError(f"session store {path} is not a readable cortexmem session database ({msg})")


def _info(row: tuple) -> SessionInfo:
    try:
        meta = json.loads(row[10])
    except (TypeError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f"session {row[0]!r}: its stored metadata is not a JSON object")
    return SessionInfo(
        session_id=row[0], tokens_seen=row[1], fingerprint=row[2], base_fingerprint=row[3],
        adapter_fingerprint=row[4], batch=row[5], nbytes=row[6], created_at=row[7], updated_at=row[8],
        version=row[9], meta=meta,
    )


def _check_id(session_id: Any) -> None:
    # one rule for every name that could ever reach the file system (see core/paths.py)
    safe_name(session_id, "session_id")


def _key_parts(key: str | tuple[str, ...]) -> tuple[str, ...]:
    return key if isinstance(key, tuple) else (key,)


def _serialise(state: TensorDict, metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    flat = state.flatten_keys(".")
    tensors = {k: v.detach().contiguous().cpu() for k, v in flat.items()}
    return save(tensors, metadata=metadata)


def _deserialise(data: bytes, batch: int, device: Any, source: Path) -> TensorDict:
    tensors = load_safetensors_checked(source, what="session state", data=data)
    try:
        td = TensorDict(tensors, batch_size=[batch]).unflatten_keys(".")
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"session state {source} does not fit batch {batch} ({one_line(e)[:200]})") from None
    return td.to(device) if device is not None else td


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes and bytes of a small tensor dict (the memory adapter)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]
