"""Stacks of blocks and the builders that make them."""

import types as _types

from .hf import HFStackLM, build_hf_stack, build_hf_stack_config, load_hf_layer_weights
from .patterns import (
    BUILTIN_TOKENS,
    ENTRY_POINT_GROUP,
    apply_global_overrides,
    build_column_auto_config,
    build_cortex_auto_config,
    build_cortex_auto_stack,
    list_tokens,
    register_token,
    reload_token_entry_points,
    tokenize,
    unregister_token,
)
from .stack import CortexStack, CortexStackConfig, build_cortex, load_stack
from .xlstm import build_xlstm_stack, xlstm_stack_config

__all__ = sorted(n for n, v in globals().items() if not n.startswith("_") and not isinstance(v, _types.ModuleType))
