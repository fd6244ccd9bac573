"""Env plumbing: flat encodings, POPGym-style memory inputs, the k-step recall task, stack resolution."""

from __future__ import annotations

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
pytest.importorskip("torchrl")
from gymnasium import spaces  # noqa: E402

from cortexmem.rl.envs import REPEAT_K_ID, FlatObservation, RepeatKEnv, encode, is_popgym, space_width  # noqa: E402
from cortexmem.rl.stacks import BUILTIN_STACKS, resolve_stack, stack_config  # noqa: E402


def test_encode_widths():
    for space, value, want in [
        (spaces.Discrete(3), 2, [0, 0, 1]),
        (spaces.MultiDiscrete([2, 3]), [1, 0], [0, 1, 1, 0, 0]),
        (spaces.Box(-1, 1, (2,)), [0.5, -0.5], [0.5, -0.5]),
        (spaces.Tuple((spaces.Discrete(2), spaces.Box(0, 1, (1,)))), (1, [0.25]), [0, 1, 0.25]),
    ]:
        assert space_width(space) == len(want)
        np.testing.assert_allclose(encode(space, value), want)
    with pytest.raises(TypeError, match="unsupported"):
        space_width(spaces.Text(5))


def test_memory_inputs_previous_action_and_first_flag():
    env = FlatObservation(RepeatKEnv(k=1, n=3, length=5), memory_inputs=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3 + 3 + 1,)
    np.testing.assert_array_equal(obs[3:], [0, 0, 0, 1])
    obs, *_ = env.step(2)
    np.testing.assert_array_equal(obs[3:], [0, 0, 1, 0])


def test_repeat_k_rewards_and_chance_level():
    env = RepeatKEnv(k=2, n=2, length=10)
    obs, _ = env.reset(seed=3)
    seen, total, done = [obs], 0.0, False
    while not done:
        target = seen[-3] if len(seen) >= 3 else 0
        obs, r, done, trunc, _ = env.step(target)
        seen.append(obs)
        total += r
    assert total == pytest.approx(1.0)
    # the best memoryless guess (the current symbol) is right half the time: mean return ~ 0
    rng_returns = []
    for seed in range(200):
        obs, _ = env.reset(seed=seed)
        ret, done = 0.0, False
        while not done:
            obs, r, done, _, _ = env.step(obs)
            ret += r
        rng_returns.append(ret)
    assert abs(np.mean(rng_returns)) < 0.1
    assert REPEAT_K_ID in gym.registry
    with pytest.raises(ValueError, match="k="):
        RepeatKEnv(k=0)


def test_popgym_detection():
    assert is_popgym("popgym-RepeatPreviousEasy-v0")
    assert not is_popgym("CartPole-v1")
    if pytest.importorskip("popgym"):
        assert is_popgym("CountRecallEasy")


def test_stack_resolution(tmp_path):
    for name in BUILTIN_STACKS:
        stack = resolve_stack(name, 8, 2)
        assert stack.d_hidden == 8
    assert len(stack_config("lstm_plain", 8, 3).blocks) == 3
    path = tmp_path / "stack.json"
    path.write_text(stack_config("conv", 8).model_dump_json())
    assert stack_config(str(path), 8) == stack_config("conv", 8)
    with pytest.raises(ValueError, match="unknown stack"):
        stack_config("definitely-not-a-stack", 8)
    with pytest.raises(ValueError, match="d_hidden"):
        stack_config("lstm_plain", 0)


def test_patterns_and_eval_registry_when_available():
    import importlib.util

    import cortexmem

    if hasattr(cortexmem, "build_cortex_auto_stack"):
        stack = resolve_stack("LC", 8)
        assert stack.d_hidden == 8
    else:
        with pytest.raises(ValueError, match="build_cortex_auto_stack"):
            resolve_stack("LC", 8)
    if importlib.util.find_spec("cortexmem.evals") is not None:
        from cortexmem.evals import list_stacks

        assert "lstm" in list_stacks()
        assert len(stack_config("mlstm", 8, 2).blocks) == 4  # named stacks repeat their blocks
        with pytest.raises(ValueError, match="num_layers"):
            resolve_stack("hf_llama", 8, 2)  # a stack that fixes its depth


def test_old_rl_names_keep_their_meaning():
    with pytest.warns(DeprecationWarning, match="lstm_plain"):
        old = stack_config("lstm", 8, 2)
    assert old == stack_config("lstm_plain", 8, 2)
    assert type(stack_config("conv_preup", 8).blocks[0]).__name__ == "PreUpBlockConfig"  # the former rl conv
    from cortexmem.stacks.named import build_stack

    assert stack_config("conv", 8) == build_stack("conv", 8).config  # one meaning per name, as in cortex eval
