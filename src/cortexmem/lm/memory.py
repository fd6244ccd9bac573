"""Memory hierarchy of the LM: STM slot buffer -> LTM (FAISS, exact or IVF) -> Archive (FAISS PQ).

Entries are ``(key [key_dim], value [value_dim])`` pairs with a global id, a use count and timestamps on a
logical clock (``tick``). Keys are L2-normalised, so every tier scores by inner product = cosine similarity.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
from pydantic import Field

from ..core.config import TaggedConfig
from ..utils.io import (
    CheckpointError,
    CheckpointNotFoundError,
    atomic_write_bytes,
    atomic_write_json,
    check_tensors,
    load_safetensors_checked,
    one_line,
    read_versioned,
    validate_config,
)

log = logging.getLogger(__name__)

MEMORY_FORMAT = "cortexmem.lm.memory"
MEMORY_VERSION = 1
TIER_STM, TIER_LTM, TIER_ARCHIVE = 0, 1, 2


class MemorySystemConfig(TaggedConfig):
    """Sizes and policies of the three tiers (``key_dim``/``value_dim`` are filled in by the model)."""

    key_dim: int = Field(default=64, ge=1)
    value_dim: int = Field(default=64, ge=1)
    stm_capacity: int = Field(default=64, ge=1)
    ltm_capacity: int = Field(default=10_000, ge=1)
    archive_capacity: int = Field(default=100_000, ge=1)
    consolidate_after_uses: int = Field(default=3, ge=1)
    archive_after_idle: int = Field(default=1000, ge=1, description="ticks unused before LTM -> Archive")
    consolidation_cycle: int = Field(default=100, ge=1, description="ticks between sleep phases")
    use_threshold: float = Field(default=0.5, description="retrieval score that counts as a use")
    ltm_index: Literal["flat", "ivf", "auto"] = "auto"
    ivf_nlist: int = Field(default=64, ge=1)
    ivf_nprobe: int = Field(default=8, ge=1)
    ivf_min_entries: int = Field(default=4096, ge=1, description='"auto": entries before IVF is trained')
    pq_m: int = Field(default=8, ge=1)
    pq_nbits: int = Field(default=8, ge=1, le=16)
    pq_min_entries: int = Field(default=2048, ge=1, description="entries needed before PQ is trained")
    target_write_rate: float = Field(default=0.1, gt=0, le=1)
    write_threshold: float = Field(default=1.0, gt=0, description="salience * strength needed to write")
    homeostasis_eta: float = Field(default=0.3, ge=0)


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


def _check_store_arrays(store: FaissStore, arrays: dict[str, np.ndarray], kind: str, path: Path) -> None:
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


class MemorySystem:
    """STM -> LTM -> Archive: usage-driven consolidation, promotion on use, homeostatic write strength."""

    def __init__(self, config: MemorySystemConfig) -> None:
        if not isinstance(config, MemorySystemConfig):
            raise TypeError(f"MemorySystem expects a MemorySystemConfig, got {type(config).__name__}")
        self.config = config
        self.stm = ShortTermMemory(config.stm_capacity, config.key_dim, config.value_dim)
        self.ltm = FaissStore("ltm", config.ltm_capacity, config, compress=False)
        self.archive = FaissStore("archive", config.archive_capacity, config, compress=True)
        self.clock = 0
        self.next_id = 0
        self.strength = 1.0
        self.counters = {
            k: 0
            for k in (
                "queries",
                "hit_queries",
                "stm_hits",
                "ltm_hits",
                "archive_hits",
                "writes",
                "observed",
                "consolidated",
                "archived",
                "promoted",
                "dropped",
                "sleeps",
                "window_writes",
                "window_observed",
            )
        }

    # ---- writing
    def _check(self, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys, values = np.asarray(keys, np.float32), np.asarray(values, np.float32)
        c = self.config
        if keys.ndim != 2 or keys.shape[1] != c.key_dim:
            raise ValueError(f"keys must be [n, {c.key_dim}], got {list(keys.shape)}")
        if values.ndim != 2 or values.shape != (len(keys), c.value_dim):
            raise ValueError(f"values must be [{len(keys)}, {c.value_dim}], got {list(values.shape)}")
        return l2_normalize(keys), values

    def write(self, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Write every entry into STM (explicit learning); returns the new ids."""
        keys, values = self._check(keys, values)
        n = len(keys)
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        now = np.full(n, self.clock, np.int64)
        self.stm.add(Entries(keys, values, ids, np.zeros(n, np.int64), now, now.copy()))
        self.counters["writes"] += n
        return ids

    def observe(self, keys: np.ndarray, values: np.ndarray, salience: np.ndarray) -> np.ndarray:
        """Write the entries whose ``salience * strength`` reaches ``write_threshold`` (automatic writes)."""
        keys, values = self._check(keys, values)
        salience = np.asarray(salience, np.float32).reshape(-1)
        if len(salience) != len(keys):
            raise ValueError(f"salience must have {len(keys)} entries, got {len(salience)}")
        keep = salience * self.strength >= self.config.write_threshold
        self.counters["observed"] += len(keys)
        self.counters["window_observed"] += len(keys)
        self.counters["window_writes"] += int(keep.sum())
        return self.write(keys[keep], values[keep])

    # ---- reading
    def retrieve(self, queries: np.ndarray, k: int, *, count_use: bool = True):
        """Top-``k`` over all tiers: ``keys [n,k,dk], values [n,k,dv], scores [n,k] (-inf: none), ids [n,k]``

        Hits with score >= ``use_threshold`` count as a use; Archive hits are promoted back to LTM.
        """
        c = self.config
        q = np.asarray(queries, np.float32)
        if q.ndim != 2 or q.shape[1] != c.key_dim:
            raise ValueError(f"queries must be [n, {c.key_dim}], got {list(q.shape)}")
        q = l2_normalize(q)
        n = len(q)
        parts = [self.stm.search(q, k), self.ltm.search(q, k), self.archive.search(q, k)]
        scores = np.concatenate([p[0] for p in parts], 1)
        refs = np.concatenate([p[1] for p in parts], 1)
        tiers = np.repeat(np.array([TIER_STM, TIER_LTM, TIER_ARCHIVE]), k)[None].repeat(n, 0)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(scores, order, 1)
        refs = np.take_along_axis(refs, order, 1)
        tiers = np.take_along_axis(tiers, order, 1)
        keys = np.zeros((n, k, c.key_dim), np.float32)
        values = np.zeros((n, k, c.value_dim), np.float32)
        ids = np.full((n, k), -1, np.int64)
        promote: set[int] = set()
        for i in range(n):
            tiers_hit: set[int] = set()
            for j in range(k):
                if not np.isfinite(scores[i, j]):
                    continue
                ref, tier = int(refs[i, j]), int(tiers[i, j])
                used = count_use and scores[i, j] >= c.use_threshold
                if tier == TIER_STM:
                    keys[i, j], values[i, j], ids[i, j] = (
                        self.stm.keys[ref],
                        self.stm.values[ref],
                        self.stm.ids[ref],
                    )
                    if used:
                        self.stm.uses[ref] += 1
                        self.stm.last_used[ref] = self.clock
                else:
                    store = self.ltm if tier == TIER_LTM else self.archive
                    keys[i, j], values[i, j], ids[i, j] = store.key(ref), store.values[ref], ref
                    if used:
                        store.meta[ref][0] += 1
                        store.meta[ref][2] = self.clock
                        if tier == TIER_ARCHIVE:
                            promote.add(ref)
                if used:
                    tiers_hit.add(tier)
            for tier in tiers_hit:  # a query counts once per tier it found a used entry in
                self.counters[("stm_hits", "ltm_hits", "archive_hits")[tier]] += 1
            self.counters["hit_queries"] += int(bool(tiers_hit))
        self.counters["queries"] += n
        if promote:
            self.ltm.add(self.archive.remove(np.array(sorted(promote), np.int64)))
            self.counters["promoted"] += len(promote)
            self._enforce_capacity()
        return keys, values, scores, ids

    # ---- time and sleep
    def tick(self, n: int = 1) -> None:
        """Advance the clock; every ``consolidation_cycle`` ticks a sleep phase runs."""
        for _ in range(n):
            self.clock += 1
            if self.clock % self.config.consolidation_cycle == 0:
                self.consolidate()

    def consolidate(self) -> dict[str, int]:
        """Sleep phase: STM -> LTM (used >= N times), idle LTM -> Archive, capacities, homeostasis."""
        c = self.config
        moved = self.stm.pop(self.stm.uses >= c.consolidate_after_uses)
        self.ltm.add(moved)
        idle = self.ltm.ids_where(lambda m: self.clock - m[2] >= c.archive_after_idle)
        archived = self.ltm.remove(idle)
        self.archive.add(archived)
        self._enforce_capacity()
        self._homeostasis()
        self.counters["consolidated"] += len(moved)
        self.counters["archived"] += len(archived)
        self.counters["sleeps"] += 1
        return {"consolidated": len(moved), "archived": len(archived)}

    def _enforce_capacity(self) -> None:
        spill = self.ltm.remove(self.ltm.overflow())
        self.archive.add(spill)
        self.counters["archived"] += len(spill)
        drop = self.archive.overflow()
        self.archive.remove(drop)
        self.counters["dropped"] += len(drop)

    def _homeostasis(self) -> None:
        # multiplicative scaling of write strength toward the target fraction of observed positions written
        seen, wrote = self.counters["window_observed"], self.counters["window_writes"]
        if seen == 0:
            return
        rate = max(wrote / seen, 1e-3)
        factor = (self.config.target_write_rate / rate) ** self.config.homeostasis_eta
        self.strength = float(np.clip(self.strength * np.clip(factor, 0.5, 2.0), 1e-3, 1e3))
        self.counters["window_observed"] = self.counters["window_writes"] = 0

    def tier_of(self, ident: int) -> str | None:
        """Which tier holds ``ident`` ("stm", "ltm", "archive") or None."""
        if ident in set(self.stm.ids.tolist()):
            return "stm"
        if ident in self.ltm.meta:
            return "ltm"
        if ident in self.archive.meta:
            return "archive"
        return None

    def get_stats(self) -> dict:
        c, k = self.config, self.counters
        q = max(k["queries"], 1)
        return {
            "clock": self.clock,
            "stm": {
                "size": len(self.stm),
                "capacity": c.stm_capacity,
                "usage": len(self.stm) / c.stm_capacity,
                "hits": k["stm_hits"],
                "evictions": self.stm.evictions,
            },
            "ltm": {
                "size": len(self.ltm),
                "capacity": c.ltm_capacity,
                "usage": len(self.ltm) / c.ltm_capacity,
                "hits": k["ltm_hits"],
                "index": self.ltm.describe(),
            },
            "archive": {
                "size": len(self.archive),
                "capacity": c.archive_capacity,
                "usage": len(self.archive) / c.archive_capacity,
                "hits": k["archive_hits"],
                "index": self.archive.describe(),
            },
            "queries": k["queries"],
            "hit_rate": k["hit_queries"] / q,
            "stm_hit_rate": k["stm_hits"] / q,
            "ltm_hit_rate": k["ltm_hits"] / q,
            "archive_hit_rate": k["archive_hits"] / q,
            "writes": k["writes"],
            "write_strength": self.strength,
            "consolidated": k["consolidated"],
            "archived": k["archived"],
            "promoted": k["promoted"],
            "dropped": k["dropped"],
            "sleeps": k["sleeps"],
        }

    # ---- persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """``memory.safetensors`` (arrays + FAISS indices as uint8) and ``memory.json``; no pickle."""
        from safetensors.numpy import save

        directory = Path(directory)
        s = self.stm
        arrays = {
            "stm.keys": s.keys,
            "stm.values": s.values,
            "stm.ids": s.ids,
            "stm.uses": s.uses,
            "stm.created": s.created,
            "stm.last_used": s.last_used,
            **self.ltm.arrays("ltm"),
            **self.archive.arrays("archive"),
        }
        atomic_write_bytes(
            directory / "memory.safetensors", save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
        )
        atomic_write_json(
            directory / "memory.json",
            {
                "format": MEMORY_FORMAT,
                "version": MEMORY_VERSION,
                "config": self.config.model_dump(mode="json"),
                "clock": self.clock,
                "next_id": self.next_id,
                "strength": self.strength,
                "counters": self.counters,
                "stm_evictions": s.evictions,
                "ltm_kind": self.ltm.kind,
                "archive_kind": self.archive.kind,
            },
        )
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> MemorySystem:
        """Read what :meth:`save` wrote; any fault in either file -> one-line ``CheckpointError``."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointNotFoundError(f"memory folder {directory} not found")
        meta_path, arr_path = directory / "memory.json", directory / "memory.safetensors"
        meta = read_versioned(meta_path, format=MEMORY_FORMAT, version=MEMORY_VERSION, what="cortexmem memory file",
                              required=("config", "clock", "next_id", "strength", "counters", "stm_evictions",
                                        "ltm_kind", "archive_kind"))
        mem = cls(validate_config(MemorySystemConfig, meta["config"], meta_path, "memory config"))
        arrays = load_safetensors_checked(arr_path, what="memory arrays file", numpy=True)
        s = mem.stm
        stm = {f"stm.{k}": getattr(s, k) for k in ("keys", "values", "ids", "uses", "created", "last_used")}
        check_tensors({k: arrays[k] for k in stm if k in arrays}, stm, arr_path, "memory arrays file")
        try:
            for k, ref in stm.items():
                setattr(s, k.split(".", 1)[1], arrays[k].astype(ref.dtype, copy=False))
            s.evictions = int(meta["stm_evictions"])
            for store, kind in ((mem.ltm, meta["ltm_kind"]), (mem.archive, meta["archive_kind"])):
                _check_store_arrays(store, arrays, kind, arr_path)
                store.load_arrays(store.name, arrays, kind)
                if store.index.ntotal != len(store.meta) or store.index.d != mem.config.key_dim:
                    raise ValueError(f"the {store.name} index holds {store.index.ntotal} vectors of size "
                                     f"{store.index.d}, expected {len(store.meta)} of size {mem.config.key_dim}")
            mem.clock, mem.next_id, mem.strength = int(meta["clock"]), int(meta["next_id"]), float(meta["strength"])
            mem.counters.update({str(k): int(v) for k, v in dict(meta["counters"]).items()})
        except (KeyError, IndexError, ValueError, TypeError, RuntimeError, OverflowError) as e:
            raise CheckpointError(f"memory checkpoint {directory} is inconsistent ({one_line(e)[:200]})") from None
        return mem
