"""CortexModule: step-by-step rollouts with episode ends equal sequence (training) mode; primers; errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict

pytest.importorskip("torchrl")
from torchrl.envs import GymEnv, InitTracker, TransformedEnv  # noqa: E402
from torchrl.envs.utils import step_mdp  # noqa: E402
from torchrl.modules import set_recurrent_mode  # noqa: E402

import cortexmem as cm  # noqa: E402
from cortexmem.rl import CortexModule  # noqa: E402
from cortexmem.rl.stacks import resolve_stack  # noqa: E402

H = 8


def _stacks():
    return {"lstm": resolve_stack("lstm_plain", H, 2), "conv_lstm": resolve_stack("conv_lstm", H)}


def _rollout(module: CortexModule, obs: torch.Tensor, init: torch.Tensor) -> TensorDict:
    """Step mode over ``obs [*B, T, H]`` with ``is_init [*B, T]``; the stored trajectory ``[*B, T]``."""
    batch = obs.shape[:-2]
    td = module.stored_initial_state(batch)
    rows = []
    for t in range(obs.shape[-2]):
        td.set("obs", obs[..., t, :])
        td.set("is_init", init[..., t, None])
        module(td)
        rows.append(td.clone())
        td = step_mdp(td, keep_other=True, exclude_action=False)
    return torch.stack(rows, dim=len(batch))


@pytest.mark.parametrize("name", ["lstm", "conv_lstm"])
@pytest.mark.parametrize("batch", [(3,), (2, 2)])
def test_rollout_equals_sequence_mode(name, batch):
    torch.manual_seed(0)
    module = CortexModule(_stacks()[name], "obs", "feat")
    T = 17
    obs = torch.randn(*batch, T, H)
    init = torch.rand(*batch, T) < 0.2
    init[..., 0] = True
    with torch.no_grad():
        traj = _rollout(module, obs, init)
    replay = traj.clone().exclude("feat")
    with set_recurrent_mode(True):
        out = module(replay)
    torch.testing.assert_close(out["feat"], traj["feat"], atol=1e-5, rtol=0)
    # the last step's next state is the true final state in both modes
    t_dim = len(batch)
    for key in module.state_keys:
        torch.testing.assert_close(
            out["next", *key].select(t_dim, -1), traj["next", *key].select(t_dim, -1), atol=1e-5, rtol=0
        )


def test_sequence_mode_splits_anywhere_and_backprops():
    """Replaying any window from its stored state reproduces the rollout; gradients reach the stack."""
    torch.manual_seed(1)
    module = CortexModule(_stacks()["conv_lstm"], "obs", "feat")
    obs, init = torch.randn(2, 19, H), torch.rand(2, 19) < 0.3
    init[:, 0] = True
    with torch.no_grad():
        traj = _rollout(module, obs, init)
    window = traj[:, 7:19].clone().exclude("feat")
    with set_recurrent_mode(True):
        out = module(window)
    torch.testing.assert_close(out["feat"], traj["feat"][:, 7:19], atol=1e-5, rtol=0)
    out["feat"].pow(2).mean().backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_resets_inside_sequence_forget_the_past():
    """With is_init at t, outputs from t on do not depend on inputs before t."""
    torch.manual_seed(2)
    module = CortexModule(_stacks()["lstm"], "obs", "feat")
    obs = torch.randn(1, 12, H)
    init = torch.zeros(1, 12, dtype=torch.bool)
    init[0, 5] = True
    other = obs.clone()
    other[0, :5] = torch.randn(5, H)
    with set_recurrent_mode(True), torch.no_grad():
        a = module(TensorDict({"obs": obs, "is_init": init[..., None]}, [1, 12]))["feat"]
        b = module(TensorDict({"obs": other, "is_init": init[..., None]}, [1, 12]))["feat"]
    assert not torch.allclose(a[0, :5], b[0, :5])
    torch.testing.assert_close(a[0, 5:], b[0, 5:], atol=1e-6, rtol=0)


def test_done_and_truncated_keys_reset_like_is_init():
    torch.manual_seed(3)
    stack = _stacks()["lstm"]
    a = CortexModule(stack, "obs", "feat")
    b = CortexModule(stack, "obs", "feat", reset_keys=("is_init", "done", "truncated"))
    obs = torch.randn(4, 9, H)
    init = torch.rand(4, 9) < 0.3
    init[:, 0] = True
    trunc = init & (torch.rand(4, 9) < 0.5)
    done = init & ~trunc
    done[:, 0] = True
    with set_recurrent_mode(True), torch.no_grad():
        ya = a(TensorDict({"obs": obs, "is_init": init[..., None]}, [4, 9]))["feat"]
        yb = b(
            TensorDict(
                {
                    "obs": obs,
                    "is_init": torch.zeros(4, 9, 1, dtype=torch.bool),
                    "done": done[..., None],
                    "truncated": trunc[..., None],
                },
                [4, 9],
            )
        )["feat"]
    torch.testing.assert_close(ya, yb)


def test_bf16_storage():
    torch.manual_seed(4)
    module = CortexModule(_stacks()["lstm"], "obs", "feat", store_dtype="bf16")
    obs, init = torch.randn(2, 10, H), torch.zeros(2, 10, dtype=torch.bool)
    init[:, 0] = True
    with torch.no_grad():
        traj = _rollout(module, obs, init)
    for key in module.state_keys:
        assert traj[key].dtype == torch.bfloat16 and traj["next", *key].dtype == torch.bfloat16
    assert traj["feat"].dtype == torch.float32
    with set_recurrent_mode(True), torch.no_grad():
        out = module(traj.clone().exclude("feat"))
    torch.testing.assert_close(out["feat"], traj["feat"], atol=5e-2, rtol=0)


class _RandomEnds(gym.Env):
    """Box observations; each step ends the episode with probability 0.25."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1, 1, (H,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, H).astype(np.float32), {}

    def step(self, action):
        obs = self.np_random.uniform(-1, 1, H).astype(np.float32)
        return obs, 0.0, bool(self.np_random.random() < 0.25), False, {}


if "cortexmem-test/RandomEnds-v0" not in gym.registry:
    gym.register("cortexmem-test/RandomEnds-v0", entry_point=_RandomEnds)


def test_primer_shapes_and_torchrl_env_rollout():
    """With InitTracker + primer, a TorchRL env rollout carries the state; a sequence-mode replay agrees."""
    torch.manual_seed(5)
    stack = _stacks()["conv_lstm"]
    module = CortexModule(stack, "observation", "feat")
    primer = module.make_tensordict_primer()
    env = TransformedEnv(GymEnv("cortexmem-test/RandomEnds-v0"), InitTracker())
    env.append_transform(primer)
    env.set_seed(0)
    reset = env.reset()
    spec = stack.state_spec()
    for (_name, path), key in zip(module._names, module.state_keys, strict=True):
        assert reset[key].shape == torch.Size(spec[path][0])
        assert reset[key].dtype == torch.float32
    policy = lambda td: module(td).set("action", torch.zeros(2))  # noqa: E731
    with torch.no_grad():
        traj = env.rollout(30, policy, break_when_any_done=False)
    assert traj["is_init"][1:].any(), "the rollout should cross an episode boundary"
    # within an episode the state fed at t is the one written at t - 1; at resets the primer zeroes it
    cont = ~traj["is_init"][1:, 0]
    for key in module.state_keys:
        torch.testing.assert_close(traj[key][1:][cont], traj["next", *key][:-1][cont])
        assert (traj[key][1:][~cont] == 0).all()
    with set_recurrent_mode(True), torch.no_grad():
        out = module(traj.clone().exclude("feat"))
    torch.testing.assert_close(out["feat"], traj["feat"], atol=1e-5, rtol=0)


def test_missing_state_means_fresh_state():
    module = CortexModule(_stacks()["lstm"], "obs", "feat")
    x = torch.randn(3, H)
    with torch.no_grad():
        a = module(TensorDict({"obs": x}, [3]))["feat"]
        b = module(module.stored_initial_state([3]).set("obs", x))["feat"]
    torch.testing.assert_close(a, b)


def test_errors_name_expected_and_got():
    stack = _stacks()["lstm"]
    with pytest.raises(ValueError, match="store_dtype"):
        CortexModule(stack, "obs", "feat", store_dtype="fp16")
    with pytest.raises(TypeError, match="MemoryModule"):
        CortexModule(torch.nn.Linear(2, 2), "obs", "feat")
    module = CortexModule(stack, "obs", "feat")
    td = module.stored_initial_state([2]).set("obs", torch.randn(2, H))
    del td[module.state_keys[0]]
    with pytest.raises(ValueError, match="missing"):
        module(td)
    with pytest.raises(ValueError, match="obs"):
        module(TensorDict({"obs": torch.randn(2, 3, H)}, [2]))
    bad = module.stored_initial_state([2]).set("obs", torch.randn(2, H))
    bad.set(module.state_keys[0], torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match="expected"):
        module(bad)
    with pytest.raises(ValueError, match="feature size"):
        module(TensorDict({"obs": torch.randn(2, H + 1)}, [2]))


def test_state_names_are_flat_under_prefix():
    stack = cm.build_cortex(
        cm.CortexStackConfig(d_hidden=H, blocks=[cm.PassThroughBlockConfig(cell=cm.LSTMCellConfig())])
    )
    module = CortexModule(stack, "obs", "feat", state_prefix="mem")
    assert module.state_keys == [
        ("mem", "PassThroughBlock_0.LSTMCell.h"),
        ("mem", "PassThroughBlock_0.LSTMCell.c"),
    ]
    assert module.out_keys[1:] == [
        ("next", "mem", "PassThroughBlock_0.LSTMCell.h"),
        ("next", "mem", "PassThroughBlock_0.LSTMCell.c"),
    ]


@pytest.mark.parametrize("pattern", ["AXMS", "D", "Ag", "H"])
def test_rollout_equals_sequence_mode_for_pattern_stacks(pattern):
    """Every memory family reachable through ``--stack`` patterns keeps rollout == training replay."""
    if not hasattr(cm, "build_cortex_auto_stack"):
        pytest.skip("cortexmem.build_cortex_auto_stack is not in this checkout")
    torch.manual_seed(6)
    module = CortexModule(resolve_stack(pattern, H), "obs", "feat")
    obs, init = torch.randn(2, 13, H), torch.rand(2, 13) < 0.25
    init[:, 0] = True
    with torch.no_grad():
        traj = _rollout(module, obs, init)
        with set_recurrent_mode(True):
            out = module(traj.clone().exclude("feat"))
    torch.testing.assert_close(out["feat"], traj["feat"], atol=1e-5, rtol=0)
