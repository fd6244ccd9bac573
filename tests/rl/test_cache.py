"""Metta-style caches: rollout steps keyed by env ids equal training sequences; get/set_memory round trip."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

pytest.importorskip("torchrl")
from cortexmem.rl import CachedCortexModule, StateCache  # noqa: E402
from cortexmem.rl.stacks import resolve_stack  # noqa: E402

H, ENVS = 8, 5


def _flat(obs, ids, dones, bptt, batch):
    """Metta layout: ``[batch * bptt]`` rows with ``bptt``/``batch`` entries."""
    n = batch * bptt
    return TensorDict(
        {
            "obs": obs.reshape(n, H),
            "training_env_ids": ids.reshape(n),
            "dones": dones.reshape(n),
            "bptt": torch.full((n,), bptt),
            "batch": torch.full((n,), batch),
        },
        batch_size=[n],
    )


def _run_rollout(module, obs, dones, order):
    """Step all envs ``T`` times; each step visits the envs in the random id groups of ``order``."""
    T = obs.shape[1]
    out = torch.zeros(ENVS, T, H)
    for t in range(T):
        for ids in order[t]:
            td = _flat(obs[ids, t], ids, dones[ids, t], 1, len(ids))
            out[ids, t] = module(td)["feat"]
    return out


@pytest.mark.parametrize("name", ["lstm_plain", "conv_lstm"])
def test_rollout_steps_equal_training_sequence(name):
    torch.manual_seed(0)
    module = CachedCortexModule(resolve_stack(name, H), "obs", "feat", ENVS)
    T = 13
    obs = torch.randn(ENVS, T, H)
    dones = torch.rand(ENVS, T) < 0.2
    gen = torch.Generator().manual_seed(1)
    order = [torch.randperm(ENVS, generator=gen).split([2, 3]) for _ in range(T)]
    with torch.no_grad():
        _run_rollout(module, obs[:, :4], dones[:, :4], order[:4])  # warm the caches with an earlier segment
        module.begin_segment()
        ref = _run_rollout(module, obs, dones, order)
    rows = torch.tensor([3, 0, 4])
    ids = rows[:, None].expand(3, T)
    td = _flat(obs[rows], ids, dones[rows], T, 3)
    y = module(td)["feat"].reshape(3, T, H)
    torch.testing.assert_close(y, ref[rows], atol=1e-5, rtol=0)
    y.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_batch_shape_layout_and_resets_from_truncateds():
    torch.manual_seed(2)
    module = CachedCortexModule(resolve_stack("lstm_plain", H), "obs", "feat", ENVS)
    obs = torch.randn(ENVS, 6, H)
    trunc = torch.zeros(ENVS, 6, dtype=torch.bool)
    trunc[:, 3] = True
    ids = torch.arange(ENVS)[:, None].expand(ENVS, 6)
    td = TensorDict({"obs": obs, "training_env_ids": ids, "truncateds": trunc}, batch_size=[ENVS, 6])
    with torch.no_grad():
        full = module(td.clone())["feat"]
        tail = module(td[:, 3:].clone())["feat"]
    torch.testing.assert_close(full[:, 3:], tail, atol=1e-6, rtol=0)


def test_get_set_memory_round_trip(tmp_path):
    torch.manual_seed(3)
    stack = resolve_stack("conv_lstm", H)
    a = CachedCortexModule(stack, "obs", "feat", ENVS)
    b = CachedCortexModule(stack, "obs", "feat", ENVS)
    c = CachedCortexModule(stack, "obs", "feat", ENVS)
    ids = torch.arange(ENVS)
    no = torch.zeros(ENVS, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(3):
            a(_flat(torch.randn(ENVS, H), ids, no, 1, ENVS))
        a.begin_segment(torch.tensor([1, 2]))
        mem = a.get_memory()
        b.set_memory(mem)
        a.cache.save(tmp_path / "memory.safetensors")
        c.cache.load(tmp_path / "memory.safetensors")
        for other in (b, c):
            for which in ("rollout", "training"):
                got = other.get_memory()[which]
                for k, v in mem[which].items(include_nested=True, leaves_only=True):
                    assert torch.equal(v, got[k]), (which, k)
        assert not torch.equal(
            mem["training"]["PreUpBlock_0", "CausalConv1dCell", "conv"][0],
            mem["rollout"]["PreUpBlock_0", "CausalConv1dCell", "conv"][0],
        )
        x = torch.randn(ENVS, H)
        ya = a(_flat(x, ids, no, 1, ENVS))["feat"]
        torch.testing.assert_close(ya, b(_flat(x, ids, no, 1, ENVS))["feat"], atol=0, rtol=0)
        torch.testing.assert_close(ya, c(_flat(x, ids, no, 1, ENVS))["feat"], atol=0, rtol=0)
    # get_memory returns copies: changing them leaves the module alone
    snapshot = a.get_memory()
    snapshot["rollout"].apply_(lambda v: v.fill_(7.0))
    assert not any((v == 7.0).all() for v in a.get_memory()["rollout"].values(include_nested=True, leaves_only=True))


def test_reset_memory_and_validation():
    stack = resolve_stack("lstm_plain", H)
    cache = StateCache(stack, ENVS, store_dtype="bf16")
    assert all(v.dtype == torch.bfloat16 for v in cache.rollout.values(include_nested=True, leaves_only=True))
    state = stack.init_state(2).apply(lambda v: v + 1.0)
    cache.scatter("rollout", torch.tensor([0, 4]), state)
    cache.reset(torch.tensor([4]))
    got = cache.gather("rollout", torch.tensor([0, 4]))
    assert (got["PassThroughBlock_0", "LSTMCell", "h"][0] == 1).all()
    assert (got["PassThroughBlock_0", "LSTMCell", "h"][1] == 0).all()
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        cache.gather("rollout", torch.tensor([5]))
    with pytest.raises(ValueError, match="rollout"):
        cache.gather("eval", torch.tensor([0]))
    with pytest.raises(ValueError, match="keys"):
        cache.set_memory({"rollout": cache.rollout})
    other = StateCache(resolve_stack("lstm_plain", H + 2), ENVS).get_memory()
    with pytest.raises(ValueError, match="expected"):
        cache.set_memory(other)
    with pytest.raises(ValueError, match="num_envs"):
        StateCache(stack, 0)
    module = CachedCortexModule(stack, "obs", "feat", ENVS)
    with pytest.raises(ValueError, match="bptt"):
        module(TensorDict({"obs": torch.randn(4, H), "training_env_ids": torch.zeros(4, dtype=torch.long)}, [4]))
