"""Stacks of blocks and the builders that make them."""

from .stack import CortexStack, CortexStackConfig, build_cortex, load_stack
from .xlstm import build_xlstm_stack, xlstm_stack_config

__all__ = ["CortexStack", "CortexStackConfig", "build_cortex", "load_stack", "build_xlstm_stack", "xlstm_stack_config"]
