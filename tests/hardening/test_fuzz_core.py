"""Fuzz the core entry points: every input either works or raises a documented error with a clear message.

CI runs the small "ci" profile; nightly: ``HYPOTHESIS_PROFILE=thorough pytest -m fuzz`` (1,000 cases each).
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

import cortexmem
from cortexmem.cli import app

pytestmark = pytest.mark.fuzz
DOCUMENTED = (ValueError, TypeError)

CELLS = st.sampled_from(["LSTMCellConfig", "CausalConv1dCellConfig", "NoSuchCellConfig", "PreUpBlockConfig"])
BLOCKS = st.sampled_from(["PassThroughBlockConfig", "PreUpBlockConfig", "PostUpBlockConfig",
                          "PostUpGatedBlockConfig", "AdapterBlockConfig", "LSTMCellConfig", "Nope"])
SMALL_INT = st.one_of(st.integers(-2, 12), st.none(), st.just("x"), st.floats(-1, 3))


@st.composite
def stack_dicts(draw):
    blocks = []
    for _ in range(draw(st.integers(0, 3))):
        cell = {"type": draw(CELLS), "hidden_size": draw(SMALL_INT)}
        if draw(st.booleans()):
            cell[draw(st.sampled_from(["num_layers", "kernel_size", "dropout", "bogus"]))] = draw(SMALL_INT)
        block = {"type": draw(BLOCKS), "cell": cell}
        if block["type"] == "AdapterBlockConfig":
            block = {"type": "AdapterBlockConfig", "block": {"type": "PassThroughBlockConfig", "cell": cell}}
        if draw(st.booleans()):
            block["proj_factor"] = draw(st.one_of(st.floats(-1, 3), st.just("big")))
        blocks.append(block)
    return {"d_hidden": draw(st.one_of(st.integers(-1, 9), st.just("8"))), "blocks": blocks,
            "post_norm": draw(st.booleans())}


@given(stack_dicts())
def test_fuzz_build_cortex_from_any_config(data):
    try:
        cfg = cortexmem.CortexStackConfig.model_validate(data)
        stack = cortexmem.build_cortex(cfg)
    except DOCUMENTED as e:
        assert str(e)
        return
    y, _ = stack(torch.randn(2, 3, cfg.d_hidden))
    assert y.shape == (2, 3, cfg.d_hidden)


_STACK = cortexmem.build_cortex(cortexmem.CortexStackConfig(d_hidden=6, blocks=[
    cortexmem.PreUpBlockConfig(cell=cortexmem.LSTMCellConfig()),
    cortexmem.PassThroughBlockConfig(cell=cortexmem.CausalConv1dCellConfig(kernel_size=3)),
])).eval()


@given(
    shape=st.lists(st.integers(0, 7), min_size=0, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.bool]),
    resets=st.one_of(st.none(), st.lists(st.integers(0, 7), min_size=1, max_size=3)),
    reset_dtype=st.sampled_from([torch.bool, torch.int64, torch.float32]),
    state_kind=st.sampled_from(["none", "fresh", "other_batch", "extra_key", "dict", "fresh_B"]),
)
def test_fuzz_stack_forward(shape, dtype, resets, reset_dtype, state_kind):
    x = torch.zeros(shape, dtype=dtype) if dtype != torch.bool else torch.zeros(shape, dtype=torch.bool)
    r = None if resets is None else torch.zeros(resets, dtype=reset_dtype)
    B = shape[0] if shape else 1
    state = {"none": None, "fresh": _STACK.init_state(max(B, 1)), "other_batch": _STACK.init_state(B + 1),
             "dict": {"a": 1}, "fresh_B": _STACK.init_state(max(B, 1))}.get(state_kind)
    if state_kind == "extra_key":
        state = _STACK.init_state(max(B, 1))
        state["junk"] = torch.zeros(max(B, 1))
    try:
        with torch.no_grad():
            y, new = _STACK(x, state, resets=r)
    except DOCUMENTED as e:
        assert str(e) and "_STACK" not in str(e)
        return
    assert y.shape == (*x.shape[:-1], 6)
    assert tuple(new.batch_size) == (x.shape[0],)
    assert y.dtype == x.dtype


@given(config_text=st.one_of(st.text(max_size=50), st.just('{"format": "cortexmem.stack", "version": 1}')),
       weights=st.binary(max_size=64), which=st.sampled_from(["config", "weights", "both", "name"]))
def test_fuzz_load_stack_corrupted(tmp_path_factory, config_text, weights, which):
    d = tmp_path_factory.mktemp("ck")
    _STACK.save(d)
    meta = json.loads((d / "config.json").read_text())
    if which in ("config", "both"):
        (d / "config.json").write_text(config_text)
    if which in ("weights", "both"):
        (d / meta["weights"]).write_bytes(weights)
    if which == "name":
        meta["weights"] = "../../" + config_text
        (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises((ValueError, TypeError, FileNotFoundError)):
        cortexmem.load_stack(d)


@given(st.lists(st.sampled_from(["info", "doctor", "bench", "--help", "--cells", "zz", "--batch", "-3", "--json",
                                 "--seq", "0", "--nope", "", "--device", "tpu", "eval"]), max_size=5))
def test_fuzz_cli_arguments(args):
    if args[:1] == ["bench"] and all(a not in args for a in ("--batch", "--seq", "--cells", "--device")):
        args = [*args, "--cells", "zz"]  # keep fuzzed bench runs tiny
    res = CliRunner().invoke(app, [*args, "--batch", "1", "--seq", "2", "--d", "4", "--repeats", "1"]
                             if args[:1] == ["bench"] else args)
    assert res.exit_code in (0, 1, 2), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
