"""CortexStack: hidden sizes inferred into a new config, JSON round trip, save / load, state nesting, the README's
quick start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cortexmem import (
    AdapterBlockConfig,
    CausalConv1dCellConfig,
    CortexStackConfig,
    LSTMCellConfig,
    PassThroughBlockConfig,
    PostUpGatedBlockConfig,
    PreUpBlockConfig,
    build_cortex,
    load_stack,
)


def _cfg():
    return CortexStackConfig(d_hidden=12, blocks=[
        PreUpBlockConfig(cell=LSTMCellConfig(num_layers=2), proj_factor=1.5),
        AdapterBlockConfig(block=PostUpGatedBlockConfig(cell=CausalConv1dCellConfig(kernel_size=3))),
        PassThroughBlockConfig(cell=LSTMCellConfig(hidden_size=12)),
    ])


def test_hidden_size_inferred_into_new_config():
    cfg = _cfg()
    stack = build_cortex(cfg)
    assert cfg.blocks[0].cell.hidden_size is None  # the user's config is never mutated
    assert stack.config.blocks[0].cell.hidden_size == 18
    assert stack.config.blocks[1].block.cell.hidden_size == 12
    assert stack.blocks[0].cell.hidden_size == 18


def test_hidden_size_mismatch_is_an_error():
    cfg = CortexStackConfig(d_hidden=8, blocks=[PreUpBlockConfig(cell=LSTMCellConfig(hidden_size=8))])
    with pytest.raises(ValueError, match="needs LSTMCellConfig.hidden_size=16, got 8"):
        build_cortex(cfg)


def test_config_json_round_trip():
    cfg = _cfg()
    text = cfg.model_dump_json()
    assert json.loads(text)["blocks"][1]["block"]["type"] == "PostUpGatedBlockConfig"
    again = CortexStackConfig.model_validate_json(text)
    assert again == cfg and type(again.blocks[1].block.cell) is CausalConv1dCellConfig


def test_save_and_load_stack(tmp_path):
    torch.manual_seed(0)
    stack = build_cortex(_cfg()).eval()
    stack.save(tmp_path / "s")
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names[0] == "config.json" and len(names) == 2 and names[1].startswith("model-")
    stack.save(tmp_path / "s")  # saving again replaces, leaving one weights file
    assert len(list((tmp_path / "s").iterdir())) == 2
    again = load_stack(tmp_path / "s").eval()
    x = torch.randn(2, 7, 12)
    torch.testing.assert_close(stack(x)[0], again(x)[0], rtol=0, atol=0)


def test_load_stack_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_stack(tmp_path)
    build_cortex(_cfg()).save(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a cortexmem stack"):
        load_stack(tmp_path)


def test_state_nesting_is_the_public_contract():
    stack = build_cortex(_cfg())
    keys = set(stack.init_state(2).keys(True, True))
    assert ("PreUpBlock_0", "LSTMCell", "h") in keys
    assert ("AdapterBlock_1", "PostUpGatedBlock", "CausalConv1dCell", "conv") in keys
    assert ("PassThroughBlock_2", "LSTMCell", "c") in keys


ROOT = Path(__file__).resolve().parents[2]


def _readme_quick_start() -> str:
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Quick start", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("where", ["README.md", "examples/quickstart.py"])
def test_quick_start_from_readme(where):
    """The README's quick-start block and examples/quickstart.py run as written and leave a working stack."""
    code = _readme_quick_start() if where == "README.md" else (ROOT / where).read_text(encoding="utf-8")
    ns: dict = {}
    exec(compile(code, where, "exec"), ns)
    stack, state = ns["stack"], ns["state"]
    out, state = stack(torch.randn(4, 16, 256), state)
    assert out.shape == (4, 16, 256)
    out, state = stack.step(torch.randn(4, 256), state)
    assert out.shape == (4, 256)
