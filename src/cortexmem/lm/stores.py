"""The tiers' storage: the short-term slot buffer (exact search in numpy) and FAISS-indexed tiers (flat, IVF, PQ)
with per-id metadata, as :class:`~cortexmem.lm.memory.MemorySystem` uses them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from ..utils.io import (
    check_tensors,
)

log = logging.getLogger(__name__)


if TYPE_CHECKING:
    from .memory import MemorySystemConfig

@dataclass
class Entries:
    """A batch of memory entries moving between tiers."""

    keys: np.ndarray  # [n, key_dim] float32
    values: np.ndarray  # [n, value_dim] float32
    ids: np.ndarray  # [n] int64
    uses: np.ndarray  # [n] int64
    created: np.ndarray  # [n] int64
    last_used: np.ndarray  # [n] int64

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def empty(key_dim: int, value_dim: int) -> Entries:
        z = np.zeros(0, np.int64)
        return Entries(np.zeros((0, key_dim), np.float32), np.zeros((0, value_dim), np.float32), z, z, z, z)

    def take(self, idx: np.ndarray) -> Entries:
        return Entries(*(a[idx] for a in (self.keys, self.values, self.ids, self.uses, self.created, self.last_used)))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ShortTermMemory:
    """Fixed slot buffer with recency eviction (the least recently written or used slot goes first)."""

    def __init__(self, capacity: int, key_dim: int, value_dim: int) -> None:
        self.capacity = capacity
        self.keys = np.zeros((capacity, key_dim), np.float32)
        self.values = np.zeros((capacity, value_dim), np.float32)
        self.ids = np.full(capacity, -1, np.int64)
        self.uses = np.zeros(capacity, np.int64)
        self.created = np.zeros(capacity, np.int64)
        self.last_used = np.zeros(capacity, np.int64)
        self.evictions = 0

    def __len__(self) -> int:
        return int((self.ids >= 0).sum())

    def add(self, e: Entries) -> None:
        for i in range(len(e)):
            free = np.flatnonzero(self.ids < 0)
            if len(free):
                slot = int(free[0])
            else:
                slot = int(np.argmin(self.last_used))
                self.evictions += 1
            self.keys[slot], self.values[slot], self.ids[slot] = e.keys[i], e.values[i], e.ids[i]
            self.uses[slot], self.created[slot], self.last_used[slot] = (
                e.uses[i],
                e.created[i],
                e.last_used[i],
            )

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine top-k: ``(scores [n, k], slots [n, k])``; missing hits have slot -1, score -inf."""
        n = len(q)
        scores = np.full((n, k), -np.inf, np.float32)
        slots = np.full((n, k), -1, np.int64)
        live = np.flatnonzero(self.ids >= 0)
        if len(live) == 0:
            return scores, slots
        sim = q @ self.keys[live].T  # [n, live]
        m = min(k, len(live))
        top = np.argsort(-sim, axis=1, kind="stable")[:, :m]
        scores[:, :m] = np.take_along_axis(sim, top, 1)
        slots[:, :m] = live[top]
        return scores, slots

    def pop(self, mask: np.ndarray) -> Entries:
        idx = np.flatnonzero(mask & (self.ids >= 0))
        out = Entries(
            self.keys[idx].copy(),
            self.values[idx].copy(),
            self.ids[idx].copy(),
            self.uses[idx].copy(),
            self.created[idx].copy(),
            self.last_used[idx].copy(),
        )
        self.ids[idx] = -1
        return out

    def entries(self) -> Entries:
        live = np.flatnonzero(self.ids >= 0)
        return Entries(
            self.keys[live],
            self.values[live],
            self.ids[live],
            self.uses[live],
            self.created[live],
            self.last_used[live],
        )


class FaissStore:
    """A FAISS-indexed tier with per-id metadata; ``compress=True`` (Archive) drops raw keys after PQ."""

    def __init__(self, name: str, capacity: int, cfg: MemorySystemConfig, *, compress: bool) -> None:
        self.name, self.capacity, self.cfg, self.compress = name, capacity, cfg, compress
        self.values: dict[int, np.ndarray] = {}
        self.keys: dict[int, np.ndarray] = {}  # raw keys (LTM always; Archive only before PQ is trained)
        self.meta: dict[int, list[int]] = {}  # id -> [uses, created, last_used]
        self.kind = "flat"
        self.index = self._flat()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.meta)

    def _flat(self) -> faiss.Index:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.cfg.key_dim))

    def describe(self) -> str:
        """Which index is live, and why exact search is used when it is a fallback."""
        c = self.cfg
        if self.kind == "ivf":
            return f"ivf (nlist={c.ivf_nlist}, nprobe={c.ivf_nprobe})"
        if self.kind == "pq":
            return f"pq (m={c.pq_m}, nbits={c.pq_nbits})"
        if self.compress:
            return f"flat (exact fallback: {len(self)} entries < {c.pq_min_entries} needed to train PQ)"
        if c.ltm_index == "flat":
            return "flat (exact)"
        return f"flat (exact fallback: {len(self)} entries < {self._ivf_min()} needed to train IVF)"

    def _ivf_min(self) -> int:
        # faiss k-means wants >= 39 points per centroid; "auto" also waits until exact search gets costly
        need = 39 * self.cfg.ivf_nlist
        return max(self.cfg.ivf_min_entries, need) if self.cfg.ltm_index == "auto" else need

    def _pq_ok(self) -> bool:
        c = self.cfg
        return c.key_dim % c.pq_m == 0 and len(self) >= max(c.pq_min_entries, 2**c.pq_nbits)

    def maybe_upgrade(self) -> None:
        """Train IVF (LTM) or PQ (Archive) once enough entries exist; until then search stays exact."""
        c = self.cfg
        pq = self.compress and self._pq_ok()
        ivf = not self.compress and c.ltm_index != "flat" and len(self) >= self._ivf_min()
        if self.kind != "flat" or not (pq or ivf):
            return
        ids = np.fromiter(self.meta, np.int64, len(self.meta))
        keys = np.stack([self.keys[i] for i in ids.tolist()])
        if pq:
            index = faiss.IndexIDMap2(faiss.IndexPQ(c.key_dim, c.pq_m, c.pq_nbits, faiss.METRIC_INNER_PRODUCT))
            index.train(keys)
            index.add_with_ids(keys, ids)
            self.index, self.kind, self.keys = index, "pq", {}
            log.info("%s: trained PQ on %d entries", self.name, len(ids))
        else:
            quant = faiss.IndexFlatIP(c.key_dim)
            index = faiss.IndexIVFFlat(quant, c.key_dim, c.ivf_nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(keys)
            index.add_with_ids(keys, ids)
            index.nprobe = c.ivf_nprobe
            self._quant = quant  # keep the coarse quantizer alive alongside the IVF index
            self.index, self.kind = index, "ivf"
            log.info("%s: trained IVF on %d entries", self.name, len(ids))

    def add(self, e: Entries) -> None:
        if len(e) == 0:
            return
        self.index.add_with_ids(np.ascontiguousarray(e.keys, np.float32), e.ids)
        vdtype = np.float16 if self.compress else np.float32
        for i, ident in enumerate(e.ids.tolist()):
            self.values[ident] = e.values[i].astype(vdtype)
            if self.kind != "pq":
                self.keys[ident] = e.keys[i].copy()
            self.meta[ident] = [int(e.uses[i]), int(e.created[i]), int(e.last_used[i])]
        self.maybe_upgrade()

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        scores, ids = self.index.search(q, k)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        return scores, ids

    def key(self, ident: int) -> np.ndarray:
        return self.keys[ident] if ident in self.keys else self.index.reconstruct(int(ident))

    def remove(self, ids: np.ndarray) -> Entries:
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            return Entries.empty(self.cfg.key_dim, self.cfg.value_dim)
        keys = np.stack([self.key(i) for i in ids.tolist()]).astype(np.float32)
        values = np.stack([self.values.pop(i).astype(np.float32) for i in ids.tolist()])
        meta = np.array([self.meta.pop(i) for i in ids.tolist()], np.int64).reshape(-1, 3)
        for i in ids.tolist():
            self.keys.pop(i, None)
        self.index.remove_ids(ids)
        return Entries(keys, values, ids, meta[:, 0], meta[:, 1], meta[:, 2])

    def ids_where(self, pred) -> np.ndarray:
        return np.array([i for i, m in self.meta.items() if pred(m)], np.int64)

    def overflow(self) -> np.ndarray:
        """Ids beyond capacity, least recently used first."""
        extra = len(self) - self.capacity
        if extra <= 0:
            return np.zeros(0, np.int64)
        order = sorted(self.meta.items(), key=lambda kv: (kv[1][2], kv[1][0], kv[0]))
        return np.array([kv[0] for kv in order[:extra]], np.int64)

    # ---- persistence
    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        ids = np.array(sorted(self.meta), np.int64)
        vd = self.cfg.value_dim
        out = {
            f"{prefix}.ids": ids,
            f"{prefix}.meta": np.array([self.meta[i] for i in ids.tolist()], np.int64).reshape(-1, 3),
            f"{prefix}.values": (
                np.stack([self.values[i] for i in ids.tolist()])
                if len(ids)
                else np.zeros((0, vd), np.float16 if self.compress else np.float32)
            ),
            f"{prefix}.index": faiss.serialize_index(self.index),
        }
        if self.keys:
            out[f"{prefix}.keys"] = np.stack([self.keys[i] for i in ids.tolist()])
        return out

    def load_arrays(self, prefix: str, arrays: dict[str, np.ndarray], kind: str) -> None:
        ids = arrays[f"{prefix}.ids"].tolist()
        meta, values = arrays[f"{prefix}.meta"], arrays[f"{prefix}.values"]
        self.meta = {i: [int(x) for x in meta[j]] for j, i in enumerate(ids)}
        self.values = {i: values[j].copy() for j, i in enumerate(ids)}
        keys = arrays.get(f"{prefix}.keys")
        self.keys = {i: keys[j].copy() for j, i in enumerate(ids)} if keys is not None else {}
        self.index = faiss.deserialize_index(np.ascontiguousarray(arrays[f"{prefix}.index"]))
        if kind == "ivf":
            self.index.nprobe = self.cfg.ivf_nprobe
        self.kind = kind


def check_store_arrays(store: FaissStore, arrays: dict[str, np.ndarray], kind: str, path: Path) -> None:
    p = store.name
    if kind not in ("flat", "ivf", "pq"):
        raise ValueError(f"unknown {p} index kind {kind!r}")
    n = arrays.get(f"{p}.ids", np.zeros((0, 0))).shape
    need = {f"{p}.ids": n, f"{p}.meta": (*n, 3), f"{p}.values": (*n, store.cfg.value_dim)}
    if f"{p}.keys" in arrays:
        need[f"{p}.keys"] = (*n, store.cfg.key_dim)
    if len(n) != 1 or f"{p}.index" not in arrays or arrays[f"{p}.index"].ndim != 1:
        raise ValueError(f"{p}.ids and {p}.index must be 1-D arrays")
    check_tensors({k: arrays[k] for k in need if k in arrays}, need, path, "memory arrays file")
