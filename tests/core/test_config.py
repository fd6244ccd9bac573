"""Tagged configs and the cell/block registries: unknown fields and tags are errors that name what is known; the
registries list the built-ins and every top-level export resolves."""

from __future__ import annotations

import pytest

import cortexmem
from cortexmem import CortexStackConfig, LSTMCellConfig


def test_configs_forbid_unknown_fields_and_types():
    with pytest.raises(ValueError, match="extra"):
        LSTMCellConfig(hidden_size=4, nope=1)
    with pytest.raises(ValueError, match="unknown config type"):
        CortexStackConfig.model_validate({"d_hidden": 4, "blocks": [{"type": "NoSuchBlockConfig"}]})
    with pytest.raises(ValueError, match="is not a BlockConfig"):
        CortexStackConfig.model_validate({"d_hidden": 4, "blocks": [{"type": "LSTMCellConfig"}]})


def test_unknown_config_type_lists_registered():
    class Orphan(cortexmem.CellConfig):
        pass

    with pytest.raises(TypeError, match="registered cell configs: .*LSTMCellConfig"):
        cortexmem.build_cell(Orphan(hidden_size=4))


def test_registries_list_builtins_and_top_level_exports():
    assert {"LSTMCell", "CausalConv1dCell"} <= set(cortexmem.list_cells())
    assert {"PassThroughBlock", "PreUpBlock", "PostUpBlock", "PostUpGatedBlock", "AdapterBlock"} <= set(
        cortexmem.list_blocks())
    for name in cortexmem.__all__:
        assert hasattr(cortexmem, name), name
