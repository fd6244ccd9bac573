"""Memory hierarchy of the LM: STM slot buffer -> LTM (FAISS, exact or IVF) -> Archive (FAISS PQ).

Entries are ``(key [key_dim], value [value_dim])`` pairs with a global id, a use count and timestamps on a
logical clock (``tick``). Keys are L2-normalised, so every tier scores by inner product = cosine similarity.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

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
from .stores import Entries, FaissStore, ShortTermMemory, check_store_arrays, l2_normalize

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
                check_store_arrays(store, arrays, kind, arr_path)
                store.load_arrays(store.name, arrays, kind)
                if store.index.ntotal != len(store.meta) or store.index.d != mem.config.key_dim:
                    raise ValueError(f"the {store.name} index holds {store.index.ntotal} vectors of size "
                                     f"{store.index.d}, expected {len(store.meta)} of size {mem.config.key_dim}")
            mem.clock, mem.next_id, mem.strength = int(meta["clock"]), int(meta["next_id"]), float(meta["strength"])
            mem.counters.update({str(k): int(v) for k, v in dict(meta["counters"]).items()})
        except (KeyError, IndexError, ValueError, TypeError, RuntimeError, OverflowError) as e:
            raise CheckpointError(f"memory checkpoint {directory} is inconsistent ({one_line(e)[:200]})") from None
        return mem
