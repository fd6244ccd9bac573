"""Bad input to ``cortex rl``: one clear line before any work, naming what is wrong."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("torchrl")
gym = pytest.importorskip("gymnasium")
from gymnasium import spaces  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cortexmem.cli import USER_ERRORS, app  # noqa: E402
from cortexmem.rl.envs import check_env  # noqa: E402


class _OddEnv(gym.Env):
    def __init__(self, obs_space=None, act_space=None):
        self.observation_space = obs_space or spaces.Discrete(2)
        self.action_space = act_space or spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


if "cortexmem-test/Odd-v0" not in gym.registry:
    gym.register(id="cortexmem-test/Odd-v0", entry_point=_OddEnv)


def _one_line(err: BaseException, *words: str) -> str:
    msg = str(err)
    assert isinstance(err, USER_ERRORS), repr(err)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


@pytest.mark.parametrize("env", ["no-such-env-v0", "RepeatPreviousEasyy", "popgym-NoSuchThing-v0"])
def test_unknown_env_names_the_families(env):
    pytest.importorskip("popgym")
    with pytest.raises(ValueError) as e:
        check_env(env)
    _one_line(e.value, repr(env), "RepeatPrevious", "Autoencode", "CountRecall", "CartPole-v1", "RepeatK")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"obs_space": spaces.Text(4)}, ["observation space", "Text"]),
        ({"act_space": spaces.Tuple([spaces.Discrete(2), spaces.Discrete(2)])}, ["action space", "Tuple"]),
        ({"act_space": spaces.Box(-1, 1, (2, 2))}, ["action space", "1-D Box"]),
    ],
)
def test_unsupported_spaces_are_one_line(kwargs, words):
    with pytest.raises(TypeError) as e:
        check_env("cortexmem-test/Odd-v0", env_kwargs=kwargs)
    _one_line(e.value, "cortexmem-test/Odd-v0", *words)


def _train(out, *extra):
    args = ["rl", "train", "--env", "cortexmem/RepeatK-v0", "--num-envs", "2", "--rollout-len", "8",
            "--d-hidden", "8", "--minibatches", "1", "--epochs", "1", "--frames", "16", "--device", "cpu",
            "--out", str(out), "--no-progress", *extra]
    return CliRunner().invoke(app, args)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    for name, stack in (("lstm", "lstm"), ("gru", "gru")):
        res = _train(root / name, "--stack", stack)
        assert res.exit_code == 0, res.output
    return root


def test_cli_unknown_env_stops_before_work(tmp_path):
    res = CliRunner().invoke(app, ["rl", "train", "--env", "NoSuchEnv-v3", "--out", str(tmp_path / "r"),
                                   "--no-progress"])
    _one_line(res.exception, "NoSuchEnv-v3", "CartPole-v1")
    assert not (tmp_path / "r").exists()


def test_resume_with_another_stack_or_env(runs):
    res = _train(runs / "lstm", "--stack", "gru", "--resume")
    _one_line(res.exception, "--stack", "'lstm'", "'gru'")
    res = CliRunner().invoke(app, ["rl", "train", "--env", "CartPole-v1", "--out", str(runs / "lstm"), "--resume",
                                   "--no-progress"])
    _one_line(res.exception, "--env", "cortexmem/RepeatK-v0", "CartPole-v1")


def test_eval_with_another_stack_or_action_space(runs):
    ckpt = str(runs / "lstm" / "checkpoint")
    res = CliRunner().invoke(app, ["rl", "eval", "--checkpoint", ckpt, "--stack", "gru", "--device", "cpu"])
    _one_line(res.exception, "'lstm'", "'gru'")
    res = CliRunner().invoke(app, ["rl", "eval", "--checkpoint", ckpt, "--env", "CartPole-v1", "--device", "cpu"])
    _one_line(res.exception, "does not fit", "Discrete(2)", "CartPole-v1", "features")


def test_weights_from_another_stack_are_refused(runs, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(runs / "lstm", mixed)
    shutil.copy(runs / "gru" / "checkpoint" / "model.safetensors", mixed / "checkpoint" / "model.safetensors")
    res = CliRunner().invoke(app, ["rl", "eval", "--checkpoint", str(mixed / "checkpoint"), "--device", "cpu"])
    _one_line(res.exception, "model.safetensors", "does not match", "missing", "cell.lstm", "unexpected", "cell.gru")


@pytest.mark.parametrize("name", ["model.safetensors", "optim.safetensors", "trainer.json"])
def test_corrupted_checkpoint_is_one_line_naming_the_file(runs, tmp_path, name):
    broken = tmp_path / "broken"
    shutil.copytree(runs / "lstm", broken)
    path = broken / "checkpoint" / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for cmd in (["rl", "eval", "--checkpoint", str(broken / "checkpoint"), "--device", "cpu"],
                ["rl", "train", "--env", "cortexmem/RepeatK-v0", "--out", str(broken), "--resume", "--no-progress",
                 "--device", "cpu"]):
        res = CliRunner().invoke(app, cmd)
        _one_line(res.exception, str(path), "corrupted")


@pytest.mark.parametrize("flags", [["--amp"], ["--step-graph", "on"]])
def test_cuda_only_flags_on_cpu_are_usage_errors_before_work(tmp_path, flags):
    res = CliRunner().invoke(app, ["rl", "train", "--env", "RepeatPreviousEasy", "--device", "cpu", *flags,
                                   "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert f"{flags[0]}" in res.output and "needs a CUDA device" in res.output
    assert not (tmp_path / "r").exists()
