"""HFDecoderLayerCell / build_hf_stack: parity with the Hugging Face model's own forward."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from cortexmem import (  # noqa: E402
    CortexStackConfig,
    DirectBlockConfig,
    HFStackLM,
    LSTMCellConfig,
    PreUpBlockConfig,
    build_cortex,
    build_hf_stack,
    build_hf_stack_config,
    load_hf_layer_weights,
    load_stack,
)

V, T = 61, 19


def _model(arch: str, **extra):
    torch.manual_seed(0)
    common = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                  num_hidden_layers=2, vocab_size=V, max_position_embeddings=256, **extra)
    cfg = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "mistral": transformers.MistralConfig}[arch](**common)
    cfg._attn_implementation = "eager"
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def _ids(batch=2, steps=T, seed=1):
    return torch.randint(0, V, (batch, steps), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_full_and_streamed_match_hf(arch):
    model = _model(arch)
    lm = HFStackLM.from_pretrained(model, mem_len=64).eval()
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
        full, _ = lm(ids)
        state, parts = None, []
        for a, b in [(0, 1), (1, 8), (8, 9), (9, T)]:
            out, state = lm(ids[:, a:b], state)
            parts.append(out)
        steps = []
        st = None
        for t in range(T):
            out, st = lm(ids[:, t : t + 1], st)
            steps.append(out)
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(parts, 1), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(steps, 1), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mem_len", [3, 7])
def test_short_memory_equals_hf_sliding_window(mem_len):
    # HF's sliding window W lets a token see W tokens including itself; our window is mem_len + 1.
    model = _model("mistral", sliding_window=mem_len + 1)
    lm = HFStackLM.from_pretrained(model, mem_len=mem_len).eval()
    ids = _ids(steps=23)
    with torch.no_grad():
        ref = model(ids).logits
        full, _ = lm(ids)
        st, parts = None, []
        for a in range(0, 23, 5):
            out, st = lm(ids[:, a : a + 5], st)
            parts.append(out)
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(parts, 1), ref, atol=1e-5, rtol=0)


def test_per_row_reset_equals_fresh_hf_forward():
    model = _model("llama")
    lm = HFStackLM.from_pretrained(model, mem_len=64).eval()
    ids = _ids(batch=3)
    resets = torch.zeros(3, T, dtype=torch.bool)
    resets[1, 7] = True
    with torch.no_grad():
        _, st = lm(_ids(batch=3, steps=5, seed=9))  # some history first
        out, _ = lm(ids, st, resets=resets)
        fresh = model(ids[1:2, 7:]).logits
        no_reset, _ = lm(ids, st)
    torch.testing.assert_close(out[1, 7:], fresh[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[[0, 2]], no_reset[[0, 2]], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, :7], no_reset[1, :7], atol=1e-5, rtol=0)


def test_state_is_bounded_by_mem_len():
    model = _model("llama")
    stack = build_hf_stack(model, mem_len=4)
    x = torch.randn(2, 30, 32)
    _, s_short = stack(x[:, :5])
    _, s_long = stack(x)
    assert s_short.numel() == s_long.numel()
    assert s_long["DirectBlock_0", "HFDecoderLayerCell", "k"].shape == (2, 2, 4, 8)
    assert s_long["DirectBlock_1", "HFDecoderLayerCell", "pos"].tolist() == [30, 30]


def test_mix_pretrained_layers_with_memory_blocks_and_round_trip(tmp_path):
    model = _model("qwen2")
    cfg = build_hf_stack_config(model, mem_len=8)
    mixed = CortexStackConfig(d_hidden=32, post_norm=False, blocks=[
        cfg.blocks[0], PreUpBlockConfig(cell=LSTMCellConfig()), cfg.blocks[1],
    ])
    stack = build_cortex(mixed)
    assert load_hf_layer_weights(stack, model) == 2
    x = torch.randn(2, 9, 32)
    y, _ = stack(x)
    assert y.shape == x.shape
    stack.save(tmp_path / "s")
    again = load_stack(tmp_path / "s")
    torch.testing.assert_close(again(x)[0], y)
    assert isinstance(again.config.blocks[0], DirectBlockConfig)


def test_bad_inputs_are_clear_errors():
    model = _model("llama")
    with pytest.raises(ValueError, match="layers must be"):
        build_hf_stack_config(model, layers=[5])
    with pytest.raises(TypeError, match="causal LM"):
        build_hf_stack_config(3)
    lm = HFStackLM.from_pretrained(model, mem_len=4)
    with pytest.raises(ValueError, match="input_ids"):
        lm(torch.randn(2, 3))


def test_column_with_a_pretrained_layer_and_a_memory_cell_as_experts():
    from cortexmem import ColumnBlockConfig, PassThroughBlockConfig

    model = _model("llama")
    hf_block = build_hf_stack_config(model, mem_len=6, layers=[1]).blocks[0]
    cfg = CortexStackConfig(d_hidden=32, blocks=[
        ColumnBlockConfig(experts=[hf_block, PassThroughBlockConfig(cell=LSTMCellConfig())]),
    ])
    stack = build_cortex(cfg)
    assert load_hf_layer_weights(stack, model) == 1
    x = torch.randn(2, 11, 32)
    y, st = stack(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    keys = {k[1] for k in st.keys(True, True)}
    assert keys == {"expert_DirectBlock_0", "expert_PassThroughBlock_1"}
    # streaming in two calls equals one call (the pretrained expert keeps its rolling KV cache)
    y1, s1 = stack(x[:, :4])
    y2, _ = stack(x[:, 4:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-5, rtol=0)
