"""Stacks of blocks and the builders that make them."""

from .hf import HFStackLM, build_hf_stack, build_hf_stack_config, load_hf_layer_weights
from .stack import CortexStack, CortexStackConfig, build_cortex, load_stack

__all__ = [
    "HFStackLM", "build_hf_stack", "build_hf_stack_config", "load_hf_layer_weights",
    "CortexStack", "CortexStackConfig", "build_cortex", "load_stack",
]
