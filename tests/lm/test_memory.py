from __future__ import annotations

import numpy as np
import pytest

from cortexmem.lm.memory import MemorySystem, MemorySystemConfig


def _mem(**kw) -> MemorySystem:
    base = dict(key_dim=16, value_dim=8, stm_capacity=32, consolidation_cycle=10_000, archive_after_idle=50)
    base.update(kw)
    return MemorySystem(MemorySystemConfig(**base))


def _rand(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_stm_retrieval_returns_the_stored_entry():
    mem = _mem()
    keys, values = _rand(20, 16), _rand(20, 8, 1)
    ids = mem.write(keys, values)
    k, v, s, got = mem.retrieve(keys[[3, 11]], 2)
    assert got[:, 0].tolist() == [ids[3], ids[11]]
    np.testing.assert_allclose(v[:, 0], values[[3, 11]], rtol=1e-6)
    np.testing.assert_allclose(s[:, 0], 1.0, atol=1e-5)
    assert s[0, 1] < s[0, 0]


def test_consolidation_stm_to_ltm_after_third_use_and_faiss_retrieval():
    mem = _mem()
    ids = mem.write(_rand(5, 16), _rand(5, 8, 1))
    target = int(ids[2])
    q = _rand(5, 16)[2:3]
    for _ in range(2):
        mem.retrieve(q, 1)
    mem.consolidate()
    assert mem.tier_of(target) == "stm"  # two uses are not enough
    mem.retrieve(q, 1)
    mem.consolidate()
    assert mem.tier_of(target) == "ltm"
    assert mem.get_stats()["ltm"]["size"] == 1 and mem.get_stats()["consolidated"] == 1
    # the FAISS-backed LTM returns it
    _, v, s, got = mem.retrieve(q, 3)
    assert got[0, 0] == target and s[0, 0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(v[0, 0], _rand(5, 8, 1)[2], rtol=1e-6)


def test_sleep_phase_runs_every_consolidation_cycle():
    mem = _mem(consolidation_cycle=4)
    ids = mem.write(_rand(3, 16), _rand(3, 8, 1))
    for _ in range(3):
        mem.retrieve(_rand(3, 16)[:1], 1)
    mem.tick(3)
    assert mem.tier_of(int(ids[0])) == "stm"
    mem.tick(1)
    assert mem.tier_of(int(ids[0])) == "ltm" and mem.get_stats()["sleeps"] == 1


def test_unused_ltm_entry_moves_to_archive_and_is_promoted_on_use():
    mem = _mem(archive_after_idle=5)
    keys = _rand(4, 16)
    ids = mem.write(keys, _rand(4, 8, 1))
    for _ in range(3):
        mem.retrieve(keys[:2], 1)
    mem.consolidate()
    assert [mem.tier_of(int(i)) for i in ids[:2]] == ["ltm", "ltm"]
    mem.tick(3)
    mem.retrieve(keys[1:2], 1)  # entry 1 stays fresh, entry 0 idles
    mem.tick(3)
    mem.consolidate()
    assert mem.tier_of(int(ids[0])) == "archive" and mem.tier_of(int(ids[1])) == "ltm"
    stats = mem.get_stats()
    assert stats["archive"]["size"] == 1 and "exact fallback" in stats["archive"]["index"]
    _, _, _, got = mem.retrieve(keys[:1], 1)
    assert got[0, 0] == ids[0]
    assert mem.tier_of(int(ids[0])) == "ltm" and mem.get_stats()["promoted"] == 1


def test_stm_evicts_least_recent_when_full():
    mem = _mem(stm_capacity=4)
    keys = _rand(5, 16)
    ids = mem.write(keys[:4], _rand(4, 8))
    mem.tick()
    mem.retrieve(keys[:1], 1)  # touch entry 0: entry 1 is now the least recent
    mem.tick()
    new = mem.write(keys[4:], _rand(1, 8))
    assert mem.tier_of(int(ids[1])) is None and mem.tier_of(int(ids[0])) == "stm"
    assert mem.tier_of(int(new[0])) == "stm" and mem.get_stats()["stm"]["evictions"] == 1


def test_ivf_and_pq_train_once_enough_entries_and_survive_save_load(tmp_path):
    cfg = dict(
        stm_capacity=400,
        ltm_index="ivf",
        ivf_nlist=4,
        ivf_nprobe=4,
        ivf_min_entries=100,
        pq_m=4,
        pq_nbits=4,
        pq_min_entries=64,
        archive_after_idle=1,
    )
    mem = _mem(**cfg)
    assert "exact fallback" in mem.get_stats()["ltm"]["index"]
    keys = _rand(300, 16)
    ids = mem.write(keys, _rand(300, 8, 1))
    mem.stm.uses[:] = 3  # as if every entry had been used three times
    mem.consolidate()
    assert mem.get_stats()["ltm"]["index"].startswith("ivf")
    _, _, _, got = mem.retrieve(keys[:20], 1)
    assert (got[:, 0] == ids[:20]).mean() >= 0.9
    mem.tick(2)
    mem.consolidate()  # everything idle -> archive, which now has enough entries to train PQ
    stats = mem.get_stats()
    assert stats["archive"]["size"] == 300 and stats["archive"]["index"].startswith("pq")
    before = mem.retrieve(keys[100:140], 3, count_use=False)
    assert (before[3][:, 0] == ids[100:140]).mean() >= 0.8  # lossy codes still find the entry
    mem.save(tmp_path / "m")
    loaded = MemorySystem.load(tmp_path / "m")
    assert loaded.get_stats() == mem.get_stats()
    after = loaded.retrieve(keys[100:140], 3, count_use=False)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_homeostasis_moves_write_strength_toward_target_rate():
    mem = _mem(target_write_rate=0.1, write_threshold=1.0)
    rng = np.random.default_rng(0)
    sal = rng.exponential(1.0, 1000).astype(np.float32)  # NLL-like surprise
    mem.observe(_rand(1000, 16), _rand(1000, 8), sal)
    first = mem.get_stats()["writes"] / 1000
    assert first > 0.3  # exp(-1) of the positions pass at strength 1
    for i in range(8):
        mem.consolidate()
        mem.stm.ids[:] = -1
        mem.observe(_rand(1000, 16, i), _rand(1000, 8, i), rng.exponential(1.0, 1000).astype(np.float32))
    last = mem.counters["window_writes"] / mem.counters["window_observed"]
    assert mem.strength < 1.0 and abs(last - 0.1) < abs(first - 0.1) / 3


def test_bad_shapes_name_expected_and_got():
    mem = _mem()
    with pytest.raises(ValueError, match=r"keys must be \[n, 16\], got \[2, 3\]"):
        mem.write(np.zeros((2, 3)), np.zeros((2, 8)))
    with pytest.raises(ValueError, match="values must be"):
        mem.write(np.zeros((2, 16)), np.zeros((3, 8)))
    with pytest.raises(ValueError, match=r"queries must be \[n, 16\]"):
        mem.retrieve(np.zeros((1, 4)), 2)
    with pytest.raises(TypeError, match="MemorySystemConfig"):
        MemorySystem({"key_dim": 4})
