"""Stacks of blocks and the builders that make them."""

from .stack import CortexStack, CortexStackConfig, build_cortex, load_stack

__all__ = ["CortexStack", "CortexStackConfig", "build_cortex", "load_stack"]
