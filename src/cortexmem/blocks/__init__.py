"""Blocks: wrap cells with projections, norms and residual paths. Importing registers the built-ins."""

from .adapter import AdapterBlock, AdapterBlockConfig
from .base import BlockConfig, CellBlock, CellBlockConfig, MemoryBlock, build_block
from .column import ColumnBlock, ColumnBlockConfig, Router, RouterConfig, collect_routing_weights
from .direct import DirectBlock, DirectBlockConfig
from .sidecar import GateContext, SidecarBlock, SidecarBlockConfig
from .standard import (
    PassThroughBlock,
    PassThroughBlockConfig,
    PostUpBlock,
    PostUpBlockConfig,
    PostUpGatedBlock,
    PostUpGatedBlockConfig,
    PreUpBlock,
    PreUpBlockConfig,
)

__all__ = [
    "BlockConfig", "CellBlockConfig", "MemoryBlock", "CellBlock", "build_block",
    "PassThroughBlock", "PassThroughBlockConfig", "PreUpBlock", "PreUpBlockConfig",
    "PostUpBlock", "PostUpBlockConfig", "PostUpGatedBlock", "PostUpGatedBlockConfig",
    "AdapterBlock", "AdapterBlockConfig", "DirectBlock", "DirectBlockConfig",
    "ColumnBlock", "ColumnBlockConfig", "Router", "RouterConfig", "collect_routing_weights",
    "SidecarBlock", "SidecarBlockConfig", "GateContext",
]
