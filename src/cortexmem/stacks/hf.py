"""Pretrained decoder layers as a cortex stack: ``build_hf_stack_config`` / ``build_hf_stack`` / ``HFStackLM``."""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from ..blocks.direct import DirectBlockConfig
from ..cells.hf_layer import HFDecoderLayerCell, HFDecoderLayerCellConfig
from .stack import CortexStack, CortexStackConfig, build_cortex


def _load_model(model_or_name: Any) -> nn.Module:
    if isinstance(model_or_name, nn.Module):
        return model_or_name
    if isinstance(model_or_name, str):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(model_or_name)
    raise TypeError(f"expected a transformers causal LM or a model name/path, got {type(model_or_name).__name__}")


def _base(model: nn.Module) -> nn.Module:
    return getattr(model, getattr(model, "base_model_prefix", "model"), model)


def build_hf_stack_config(
    model_or_name: Any, *, mem_len: int = 512, layers: list[int] | None = None, attn_implementation: str = "sdpa"
) -> CortexStackConfig:
    """A stack config with one ``DirectBlock(HFDecoderLayerCell)`` per chosen decoder layer (all by default)."""
    model = _load_model(model_or_name)
    hf = model.config
    chosen = list(range(hf.num_hidden_layers)) if layers is None else list(layers)
    bad = [i for i in chosen if not 0 <= i < hf.num_hidden_layers]
    if bad or not chosen:
        raise ValueError(f"layers must be a non-empty list of indices in [0, {hf.num_hidden_layers}), got {layers}")
    blocks = [
        DirectBlockConfig(cell=HFDecoderLayerCellConfig(
            hidden_size=hf.hidden_size, hf_config=hf.to_dict(), layer_idx=i, mem_len=mem_len,
            attn_implementation=attn_implementation,
        ))
        for i in chosen
    ]
    return CortexStackConfig(d_hidden=hf.hidden_size, blocks=blocks, post_norm=False)


def load_hf_layer_weights(stack: nn.Module, model_or_name: Any) -> int:
    """Copy pretrained decoder-layer weights into every ``HFDecoderLayerCell`` of ``stack`` (by ``layer_idx``)."""
    model = _load_model(model_or_name)
    layers = _base(model).layers
    count = 0
    for module in stack.modules():
        if isinstance(module, HFDecoderLayerCell):
            module.layer.load_state_dict(layers[module.config.layer_idx].state_dict())
            count += 1
    return count


def build_hf_stack(
    model_or_name: Any, *, mem_len: int = 512, layers: list[int] | None = None, attn_implementation: str = "sdpa"
) -> CortexStack:
    """A :class:`CortexStack` carrying the pretrained layers, weights loaded."""
    model = _load_model(model_or_name)
    stack = build_cortex(build_hf_stack_config(model, mem_len=mem_len, layers=layers,
                                               attn_implementation=attn_implementation))
    load_hf_layer_weights(stack, model)
    return stack.to(next(model.parameters()).dtype)


class HFStackLM(nn.Module):
    """Embedding -> stack -> the model's final norm -> LM head; ``forward(input_ids, state, resets)``."""

    def __init__(self, model: nn.Module, stack: CortexStack) -> None:
        super().__init__()
        base = _base(model)
        self.embed = base.embed_tokens
        self.norm = base.norm
        self.lm_head = model.get_output_embeddings()
        self.stack = stack

    @classmethod
    def from_pretrained(cls, model_or_name: Any, *, mem_len: int = 512, layers: list[int] | None = None,
                        stack: CortexStack | None = None) -> HFStackLM:
        model = _load_model(model_or_name)
        return cls(model, stack if stack is not None else build_hf_stack(model, mem_len=mem_len, layers=layers))

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        return self.stack.init_state(batch, device=device, dtype=dtype)

    def forward(self, input_ids: Tensor, state: TensorDict | None = None, *,
                resets: Tensor | None = None) -> tuple[Tensor, TensorDict]:
        """``input_ids`` ``[B, T]`` -> ``(logits [B, T, V], new_state)``."""
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be an integer tensor [B, T], got {got}")
        h, state = self.stack(self.embed(input_ids), state, resets=resets)
        return self.lm_head(self.norm(h)), state
