"""HFDecoderLayerCell: one decoder layer of a Hugging Face causal LM as a cell with a rolling KV cache.

State (per row): ``k, v`` ``[B, n_kv_heads, mem_len, head_dim]`` (post-rotary, oldest first), ``valid``
``[B, mem_len]`` (which slots hold a real token) and ``pos`` ``[B]`` (the position of the next token).

Semantics: the token at position ``t`` attends to itself and to at most ``mem_len`` preceding tokens of its own
segment (tokens since the last reset), i.e. a sliding window of ``mem_len + 1`` tokens. Rotary positions continue
across calls and restart at 0 after a reset. Because the cache stores keys after the rotary embedding and RoPE
scores depend only on relative positions, streaming chunk by chunk equals one full call.

The layer's own ``forward`` runs unchanged: the cell hands it an explicit additive attention mask and a small
cache object whose ``update`` prepends the carried keys/values (the layer calls it like any HF cache).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.registry import register_cell
from .base import CellConfig, MemoryCell


class HFDecoderLayerCellConfig(CellConfig):
    """``hf_config``: the model's ``config.to_dict()``; ``layer_idx``: which decoder layer this cell holds."""

    hf_config: dict[str, Any]
    layer_idx: int = Field(default=0, ge=0)
    mem_len: int = Field(default=512, ge=1)
    attn_implementation: str = Field(default="sdpa", pattern="^(sdpa|eager)$")

    @classmethod
    def example(cls, hidden_size: int) -> HFDecoderLayerCellConfig:
        from transformers import LlamaConfig

        cfg = LlamaConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_attention_heads=2,
                          num_key_value_heads=1, num_hidden_layers=1, vocab_size=32, max_position_embeddings=256)
        return cls(hidden_size=hidden_size, hf_config=cfg.to_dict(), mem_len=8)


def hf_config_from_dict(data: dict[str, Any]):
    """Rebuild a ``transformers`` config object from ``config.to_dict()`` output."""
    from transformers import AutoConfig

    data = dict(data)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ValueError("hf_config must contain 'model_type' (use model.config.to_dict())")
    return AutoConfig.for_model(model_type, **data)


def hf_layer_classes(config) -> tuple[type[nn.Module], type[nn.Module]]:
    """``(DecoderLayer class, RotaryEmbedding class)`` of the architecture, found on a meta-device skeleton."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    base = getattr(skeleton, skeleton.base_model_prefix, skeleton)
    layers, rotary = getattr(base, "layers", None), getattr(base, "rotary_emb", None)
    if layers is None or rotary is None:
        raise ValueError(
            f"HFDecoderLayerCell supports rotary decoder-only models with `model.layers` and `model.rotary_emb` "
            f"(Llama, Qwen2, Mistral, ...); {type(skeleton).__name__} has layers={layers is not None}, "
            f"rotary_emb={rotary is not None}"
        )
    return type(layers[0]), type(rotary)


class _CarriedKV:
    """The minimal cache protocol a HF attention module calls: ``update`` returns past + new keys/values."""

    def __init__(self, k: Tensor, v: Tensor) -> None:
        self.k, self.v = k, v

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        self.k = torch.cat([self.k.to(key_states.dtype), key_states], dim=2)
        self.v = torch.cat([self.v.to(value_states.dtype), value_states], dim=2)
        return self.k, self.v


@register_cell(HFDecoderLayerCellConfig)
class HFDecoderLayerCell(MemoryCell):
    def __init__(self, config: HFDecoderLayerCellConfig) -> None:
        super().__init__(config)
        hf = hf_config_from_dict(config.hf_config)
        hf._attn_implementation = config.attn_implementation
        if hf.hidden_size != config.hidden_size:
            raise ValueError(f"hidden_size={config.hidden_size} but the HF config has hidden_size={hf.hidden_size}")
        if config.layer_idx >= hf.num_hidden_layers:
            raise ValueError(f"layer_idx must be < num_hidden_layers={hf.num_hidden_layers}, got {config.layer_idx}")
        layer_cls, rotary_cls = hf_layer_classes(hf)
        self.layer = layer_cls(hf, config.layer_idx)
        self.rotary = rotary_cls(config=hf)
        self.mem_len = config.mem_len
        self.n_kv = getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads
        self.head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        kv = (batch, self.n_kv, self.mem_len, self.head_dim)
        dtype = dtype or torch.float32
        return TensorDict({
            "k": torch.zeros(kv, device=device, dtype=dtype),
            "v": torch.zeros(kv, device=device, dtype=dtype),
            "valid": torch.zeros(batch, self.mem_len, dtype=torch.bool, device=device),
            "pos": torch.zeros(batch, dtype=torch.long, device=device),
        }, batch_size=[batch], device=device)

    def forward_sequence(self, x: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        B, T, _ = x.shape
        M = self.mem_len
        t = torch.arange(T, device=x.device)
        if resets is None:
            resets = torch.zeros(B, T, dtype=torch.bool, device=x.device)
        seg = resets.long().cumsum(1)  # (B, T) segment index; 0 = continues the carried state
        last = torch.where(resets, t, -1).cummax(1).values  # index of the last reset at or before t
        pos = torch.where(last >= 0, t - last, state["pos"][:, None] + t)  # (B, T)

        j = torch.arange(M, device=x.device)
        see_cache = state["valid"][:, None, :] & (seg == 0)[:, :, None] & (j[None, None, :] >= t[None, :, None])
        dist = t[:, None] - t[None, :]  # query t, key s
        see_new = (dist >= 0) & (dist <= M)
        see_new = see_new[None] & (seg[:, :, None] == seg[:, None, :])
        visible = torch.cat([see_cache, see_new], dim=-1)  # (B, T, M + T)
        mask = torch.zeros(visible.shape, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(~visible, torch.finfo(x.dtype).min)[:, None]  # (B, 1, T, M + T)

        cache = _CarriedKV(state["k"], state["v"])
        cos_sin = self.rotary(x, pos)
        out = self.layer(x, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                         position_embeddings=cos_sin)
        y = out[0] if isinstance(out, tuple) else out

        keep_old = state["valid"] & (seg[:, -1:] == 0)
        keep_new = seg == seg[:, -1:]
        valid = torch.cat([keep_old, keep_new], dim=1)[:, -M:]
        slot = valid[:, None, :, None]  # empty slots hold zeros, exactly as after a reset
        new = TensorDict({
            "k": torch.where(slot, cache.k[:, :, -M:], 0.0).to(state["k"].dtype),
            "v": torch.where(slot, cache.v[:, :, -M:], 0.0).to(state["v"].dtype),
            "valid": valid,
            "pos": pos[:, -1] + 1,
        }, batch_size=state.batch_size, device=state.device)
        return y, new
