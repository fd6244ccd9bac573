"""Pattern language: built-in tokens, tokenising, custom maps, registered/entry-point tokens, overrides."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest
import torch

import cortexmem
from cortexmem import (
    BUILTIN_TOKENS,
    CausalConv1dCellConfig,
    ColumnBlockConfig,
    CortexStackConfig,
    LSTMCellConfig,
    PassThroughBlockConfig,
    PostUpBlockConfig,
    RouterConfig,
    build_column_auto_config,
    build_cortex,
    build_cortex_auto_config,
    build_cortex_auto_stack,
    load_stack,
    register_token,
    reload_token_entry_points,
    tokenize,
    unregister_token,
)
from cortexmem.core.config import config_class
from cortexmem.core.registry import CellToken, register_cell_token

EXPECTED = {  # token -> (block config, cell config, fields set on the cell)
    "A": ("PostUpBlockConfig", "AxonCellConfig", {}),
    "Ag": ("PostUpGatedBlockConfig", "AGaLiTeCellConfig", {}),
    "X": ("PostUpGatedBlockConfig", "XLCellConfig", {}),
    "X^": ("PostUpGatedBlockConfig", "XLCellConfig", {"use_axon_qkv": True}),
    "M": ("PreUpBlockConfig", "mLSTMCellConfig", {}),
    "M^": ("PreUpBlockConfig", "mLSTMCellConfig", {"use_axon_layer": True, "use_axon_qkv": True}),
    "S": ("PostUpBlockConfig", "sLSTMCellConfig", {}),
    "S^": ("PostUpBlockConfig", "sLSTMCellConfig", {"use_axon_layer": True}),
    "L": ("PassThroughBlockConfig", "LSTMCellConfig", {}),
    "G": ("PassThroughBlockConfig", "GRUCellConfig", {}),
    "C": ("PassThroughBlockConfig", "CausalConv1dCellConfig", {}),
    "D": ("PreUpBlockConfig", "GatedDeltaCellConfig", {}),
    "H": ("PostUpBlockConfig", "HybridCellConfig", {}),
}


@pytest.fixture(autouse=True)
def _clean_registry():
    before = dict(cortexmem.stacks.patterns._REGISTERED)
    yield
    cortexmem.stacks.patterns._REGISTERED.clear()
    cortexmem.stacks.patterns._REGISTERED.update(before)


# --- built-in tokens ----------------------------------------------------------------------------------------
def test_builtin_table_is_complete():
    assert set(BUILTIN_TOKENS) == set(EXPECTED)


@pytest.mark.parametrize("tok", sorted(EXPECTED))
def test_builtin_token_builds_its_block(tok, tmp_path):
    block, cell, fields = EXPECTED[tok]
    cfg = build_cortex_auto_config(16, 1, tok)
    b = cfg.blocks[0]
    assert type(b).__name__ == block and type(b.cell).__name__ == cell
    assert {k: getattr(b.cell, k) for k in fields} == fields
    again = CortexStackConfig.model_validate_json(cfg.model_dump_json())
    assert again == cfg
    torch.manual_seed(0)
    stack = build_cortex(cfg).eval()
    stack.save(tmp_path / tok.replace("^", "_axon"))
    loaded = load_stack(tmp_path / tok.replace("^", "_axon")).eval()
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(stack(x)[0], loaded(x)[0], rtol=0, atol=0)


def test_builtin_tokens_come_from_the_cell_registry(monkeypatch):
    from cortexmem.core import registry

    monkeypatch.setattr(registry, "_TOKENS", dict(registry._TOKENS))
    monkeypatch.setattr(registry, "_CELL_NAMES", dict(registry._CELL_NAMES))
    assert BUILTIN_TOKENS["D"] == CellToken(config_class("GatedDeltaCellConfig"), "PreUpBlockConfig")
    register_cell_token(LSTMCellConfig, "Zq", block="PostUpBlockConfig", axon={"num_layers": 2}, name="zq_lstm")
    assert {"Zq", "Zq^"} <= set(BUILTIN_TOKENS) and registry.cell_names()["zq_lstm"] == "Zq"
    assert build_column_auto_config(8, "Zq^ L").experts[0].cell.num_layers == 2
    with pytest.raises(ValueError, match=r"LSTMCellConfig has no fields \['use_axon_qkv'\]"):
        register_cell_token(LSTMCellConfig, "Zr", axon={"use_axon_qkv": True})  # fails when declared, not used
    with pytest.raises(ValueError, match="token 'L' is already declared by LSTMCellConfig"):
        register_cell_token(CausalConv1dCellConfig, "L")
    register_cell_token(LSTMCellConfig, "Zs", axon={"num_layers": 0})
    with pytest.raises(ValueError, match=r"token 'Zs\^': cannot build LSTMCellConfig\(\*\*\{'num_layers': 0"):
        build_column_auto_config(8, "Zs^")


# --- tokenising ---------------------------------------------------------------------------------------------
Q = PassThroughBlockConfig(cell=CausalConv1dCellConfig(kernel_size=2))
Y = PostUpBlockConfig(cell=LSTMCellConfig(num_layers=2))


@pytest.mark.parametrize("pattern,tokens", [
    ("AXMS", ["A", "X", "M", "S"]),
    ("AgA", ["Ag", "A"]),
    ("AAg", ["A", "Ag"]),
    ("X^M^S^", ["X^", "M^", "S^"]),
    ("  L  C\tL\n", ["L", "C", "L"]),
    ("DH", ["D", "H"]),
])
def test_tokenize_builtins(pattern, tokens):
    assert tokenize(pattern) == tokens


def test_tokenize_custom_symbols():
    cm = {"Y": Y, "Q": Q, "Foo": Q, "YQ": Y}
    assert tokenize("Y X^ Q", cm) == ["Y", "X^", "Q"]
    assert tokenize("YQ", cm) == ["YQ"]  # longest match
    assert tokenize("Y Q", cm) == ["Y", "Q"]  # spaces separate
    assert tokenize("FooL", cm) == ["Foo", "L"]


@pytest.mark.parametrize("pattern,match", [
    ("", "holds no tokens"),
    ("   ", "holds no tokens"),
    ("LZ", r"unknown token at 'Z'; known tokens: \['A', 'Ag'"),
    ("ag", "unknown token at 'ag'"),
    ("L^", r"token 'L' has no axon variant \('L\^'\)"),
    ("A^", "token 'A' has no axon variant"),
    ("Ag^", "token 'Ag' has no axon variant"),
    ("^", r"unknown token at '\^'"),
    ("X^^", "token 'X\\^' has no axon variant"),
])
def test_tokenize_errors(pattern, match):
    with pytest.raises(ValueError, match=match):
        tokenize(pattern)


def test_tokenize_bad_types_and_names():
    with pytest.raises(TypeError, match="must be a str, got int"):
        tokenize(3)
    with pytest.raises(ValueError, match="token names are a letter"):
        tokenize("L", {"1x": Q})
    with pytest.raises(ValueError, match="token names are a letter"):
        tokenize("L", {"a b": Q})
    with pytest.raises(TypeError, match="must map to a BlockConfig or a callable"):
        tokenize("L", {"Q": 5})
    with pytest.raises(TypeError, match="custom_map must be a mapping"):
        tokenize("L", [("Q", Q)])


# --- custom maps and registered tokens ----------------------------------------------------------------------
def test_custom_map_adds_and_replaces_symbols():
    cfg = build_column_auto_config(8, "Y L Q", custom_map={"Q": Q, "Y": Y, "L": Q})
    assert [type(e.cell).__name__ for e in cfg.experts] == ["LSTMCellConfig", "CausalConv1dCellConfig",
                                                            "CausalConv1dCellConfig"]
    assert cfg.experts[0] == Y and cfg.experts[0] is not Y  # copied, never shared with the caller
    assert cfg.experts[1] is not cfg.experts[2]
    assert Y.cell.hidden_size is None
    assert tokenize("L") == ["L"] and build_cortex_auto_config(8, 1, "L").blocks[0].cell == LSTMCellConfig()


def test_custom_map_axon_variant_only_when_given():
    assert tokenize("Q^", {"Q": Q, "Q^": Y}) == ["Q^"]
    with pytest.raises(ValueError, match="token 'Q' has no axon variant"):
        tokenize("Q^", {"Q": Q})


def test_register_token_decorator_and_variant():
    @register_token("Yy")
    def make_y():
        return PostUpBlockConfig(cell=LSTMCellConfig(num_layers=3))

    register_token("Yy^", PassThroughBlockConfig(cell=CausalConv1dCellConfig(kernel_size=5)))
    cfg = build_column_auto_config(8, "Yy Yy^ L")
    assert [e.cell.model_dump()["type"] for e in cfg.experts] == ["LSTMCellConfig", "CausalConv1dCellConfig",
                                                                  "LSTMCellConfig"]
    assert cfg.experts[0].cell.num_layers == 3 and cfg.experts[1].cell.kernel_size == 5
    assert "Yy^" in cortexmem.list_tokens()
    unregister_token("Yy^")
    with pytest.raises(ValueError, match="no axon variant"):
        tokenize("Yy^")
    with pytest.raises(ValueError, match="is not registered"):
        unregister_token("Yy^")


def test_register_token_class_and_conflicts():
    class TinyBlockConfig(PassThroughBlockConfig):
        cell: cortexmem.CellConfig = LSTMCellConfig()

    register_token("Tn")(TinyBlockConfig)
    assert type(build_column_auto_config(8, "Tn").experts[0]) is TinyBlockConfig
    with pytest.raises(ValueError, match="already defined; pass overwrite=True"):
        register_token("Tn", Q)
    with pytest.raises(ValueError, match="'L' is already defined"):
        register_token("L", Q)
    register_token("L", Q, overwrite=True)
    assert type(build_column_auto_config(8, "L").experts[0].cell) is CausalConv1dCellConfig
    register_token("Bad", lambda: 3)
    with pytest.raises(TypeError, match="factory returned int, expected a BlockConfig"):
        build_column_auto_config(8, "Bad")
    with pytest.raises(TypeError, match="must map to a BlockConfig"):
        register_token("Nope", "text")


def test_entry_point_tokens(tmp_path, caplog):
    (tmp_path / "cm_tok_plugin.py").write_text(textwrap.dedent("""
        from cortexmem import LSTMCellConfig, PostUpBlockConfig
        LOADED = []
        def make():
            LOADED.append(1)
            return PostUpBlockConfig(cell=LSTMCellConfig(num_layers=4))
        def broken():
            raise RuntimeError("boom")
    """))
    dist = tmp_path / "cm_tok_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cm-tok-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[cortexmem.tokens]\nPl = cm_tok_plugin:make\nPl^ = cm_tok_plugin:nothere\nL = cm_tok_plugin:make\n"
    )
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    reload_token_entry_points()
    try:
        assert tokenize("PlL") == ["Pl", "L"]
        assert "cm_tok_plugin" not in sys.modules  # discovered, not loaded
        assert "shadow a built-in" in caplog.text
        cfg = build_column_auto_config(8, "Pl C")
        assert cfg.experts[0].cell.num_layers == 4
        assert sys.modules["cm_tok_plugin"].LOADED == [1]
        with pytest.raises(ValueError, match=r"'Pl\^': cannot load entry point 'cm_tok_plugin:nothere'"):
            build_column_auto_config(8, "Pl^")
        register_token("Pl", Q)  # explicit registration wins over a plugin
        assert type(build_column_auto_config(8, "Pl").experts[0].cell) is CausalConv1dCellConfig
        unregister_token("Pl")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("cm_tok_plugin", None)
        importlib.invalidate_caches()
        reload_token_entry_points()
    with pytest.raises(ValueError, match="unknown token"):
        tokenize("Pl")


# --- builders -----------------------------------------------------------------------------------------------
def test_build_cortex_auto_config_layers():
    cfg = build_cortex_auto_config(8, 3, "LC", post_norm=False)
    assert len(cfg.blocks) == 3 and not cfg.post_norm
    assert all(isinstance(b, ColumnBlockConfig) and len(b.experts) == 2 for b in cfg.blocks)
    assert cfg.blocks[0] is not cfg.blocks[1]
    cfg = build_cortex_auto_config(8, 2, ["L", "C L C"])
    assert isinstance(cfg.blocks[0], PassThroughBlockConfig)  # a one-token layer is the bare block
    assert [type(e.cell).__name__[:4] for e in cfg.blocks[1].experts] == ["Caus", "LSTM", "Caus"]
    stack = build_cortex_auto_stack(8, 2, ["L", "C L C"])
    assert list(stack.init_state(1).keys()) == ["PassThroughBlock_0", "ColumnBlock_1"]
    assert sorted(stack.init_state(1)["ColumnBlock_1"].keys()) == [
        "expert_PassThroughBlock_0", "expert_PassThroughBlock_1", "expert_PassThroughBlock_2"]


def test_build_column_auto_config():
    r = RouterConfig(top_k=1, temperature=0.5)
    cfg = build_column_auto_config(8, "L", router=r)
    assert isinstance(cfg, ColumnBlockConfig) and len(cfg.experts) == 1 and cfg.router == r
    with pytest.raises(TypeError, match="router must be a RouterConfig"):
        build_column_auto_config(8, "LC", router={"top_k": 1})
    with pytest.raises(ValueError, match="top_k must be <= number of experts"):
        build_column_auto_config(8, "LC", router=RouterConfig(top_k=3))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(d_hidden=0, num_layers=1, pattern="L"), ValueError, "d_hidden must be an int >= 1, got 0"),
    (dict(d_hidden=8, num_layers=0, pattern="L"), ValueError, "num_layers must be an int >= 1, got 0"),
    (dict(d_hidden=8, num_layers=3, pattern=["L", "C"]), ValueError, "patterns, expected num_layers=3"),
    (dict(d_hidden=8, num_layers=1, pattern=5), TypeError, "pattern must be a str or a list of str, got int"),
    (dict(d_hidden=8, num_layers=1, pattern=[5]), TypeError, "layer pattern must be a str, got int"),
    (dict(d_hidden=8, num_layers=1, pattern=["L C", ""]), ValueError, "has 2 layer patterns"),
])
def test_builder_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        build_cortex_auto_config(**kwargs)


# --- global overrides ---------------------------------------------------------------------------------------
def test_override_merges_only_explicit_fields():
    custom = {"Q": PassThroughBlockConfig(cell=LSTMCellConfig(num_layers=3, dropout=0.25))}
    cfg = build_cortex_auto_config(8, 2, "L Q C", custom_map=custom, override_global_configs=[
        LSTMCellConfig(num_layers=2), RouterConfig(temperature=0.7)])
    for col in cfg.blocks:
        lstm_plain, lstm_custom, conv = (e.cell for e in col.experts)
        assert (lstm_plain.num_layers, lstm_plain.dropout) == (2, 0.0)
        assert (lstm_custom.num_layers, lstm_custom.dropout) == (2, 0.25)  # dropout not set on the override
        assert conv == CausalConv1dCellConfig()
        assert col.router.temperature == 0.7 and col.router.d_key == RouterConfig().d_key
    assert custom["Q"].cell.num_layers == 3  # the caller's configs are untouched


def test_explicit_fields_is_a_deprecated_alias_of_model_fields_set():
    with pytest.warns(DeprecationWarning, match="model_fields_set"):
        assert LSTMCellConfig(num_layers=2).explicit_fields() == {"num_layers": 2}


def test_override_order_blocks_and_json():
    cfg = build_cortex_auto_config(8, 1, "LC", override_global_configs=[
        LSTMCellConfig(num_layers=2), LSTMCellConfig(num_layers=3),
        PassThroughBlockConfig.model_construct(norm="rmsnorm"), RouterConfig(top_k=1, d_key=4),
        ColumnBlockConfig.model_construct(use_mixer=False),
    ])
    col = cfg.blocks[0]
    assert col.experts[0].cell.num_layers == 3  # later override wins
    assert [e.norm for e in col.experts] == ["rmsnorm", "rmsnorm"]
    assert type(col.experts[1].cell) is CausalConv1dCellConfig  # block override kept its cell
    assert (col.router.top_k, col.router.d_key) == (1, 4)
    assert col.use_mixer is False and len(col.experts) == 2
    again = CortexStackConfig.model_validate_json(cfg.model_dump_json())
    assert again == cfg and json.loads(cfg.model_dump_json())["blocks"][0]["router"]["top_k"] == 1


@pytest.mark.parametrize("override,exc,match", [
    (LSTMCellConfig(hidden_size=8), ValueError, r"sets \['hidden_size'\].*cannot be overridden"),
    (LSTMCellConfig(), ValueError, "sets no field explicitly"),
    (CausalConv1dCellConfig(kernel_size=2), ValueError, "matches no config in the generated graph"),
    (RouterConfig(top_k=3), ValueError, r"(?s)made ColumnBlockConfig invalid.*top_k must be <= number of"),
    (PassThroughBlockConfig.model_construct(norm="batchnorm"), ValueError, "PassThroughBlockConfig invalid"),
    (CortexStackConfig.model_construct(d_hidden=4), ValueError, r"sets \['d_hidden'\]"),
    ({"num_layers": 2}, TypeError, "must be a config instance, got dict"),
])
def test_override_errors(override, exc, match):
    with pytest.raises(exc, match=match):
        build_cortex_auto_config(8, 1, "L L", override_global_configs=[override])


def test_override_must_be_a_list():
    with pytest.raises(TypeError, match="must be a list of configs, got LSTMCellConfig"):
        build_cortex_auto_config(8, 1, "L", override_global_configs=LSTMCellConfig(num_layers=2))


def test_override_post_norm_on_stack_config():
    cfg = build_cortex_auto_config(8, 1, "L", override_global_configs=[
        CortexStackConfig.model_construct(post_norm=False)])
    assert cfg.post_norm is False


# --- round trips --------------------------------------------------------------------------------------------
def test_generated_stack_round_trips_through_save_and_load(tmp_path):
    torch.manual_seed(0)
    stack = build_cortex_auto_stack(8, 2, ["LC", "C L Q"], custom_map={"Q": Q}, override_global_configs=[
        RouterConfig(top_k=2, temperature=0.8), LSTMCellConfig(num_layers=2)]).eval()
    with torch.no_grad():
        for p in stack.parameters():
            p.add_(0.05 * torch.randn_like(p))  # leave init so every weight matters
    stack.save(tmp_path / "s")
    loaded = load_stack(tmp_path / "s").eval()
    assert loaded.config == stack.config
    x = torch.randn(2, 7, 8)
    (y1, s1), (y2, s2) = stack(x), loaded(x)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert (s1 == s2).all()


@pytest.mark.parametrize("pattern", ["AXMS", "X^M^S^", "AgDH", "LC"])
def test_multi_token_patterns_round_trip(pattern, tmp_path):
    cfg = build_cortex_auto_config(16, 2, pattern)
    assert CortexStackConfig.model_validate_json(cfg.model_dump_json()) == cfg
    torch.manual_seed(0)
    stack = build_cortex(cfg).eval()
    stack.save(tmp_path / "s")
    x = torch.randn(1, 4, 16)
    torch.testing.assert_close(stack(x)[0], load_stack(tmp_path / "s").eval()(x)[0], rtol=0, atol=0)
