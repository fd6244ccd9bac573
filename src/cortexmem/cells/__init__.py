"""Recurrent cells. Importing this package registers every built-in cell."""

from .base import CellConfig, MemoryCell, build_cell
from .conv import CausalConv1dCell, CausalConv1dCellConfig
from .gated_delta import DeltaMemoryConfig, GatedDeltaCell, GatedDeltaCellConfig
from .hf_layer import HFDecoderLayerCell, HFDecoderLayerCellConfig
from .hybrid import HybridCell, HybridCellConfig
from .lstm import LSTMCell, LSTMCellConfig

__all__ = [
    "CellConfig", "MemoryCell", "build_cell",
    "LSTMCell", "LSTMCellConfig",
    "CausalConv1dCell", "CausalConv1dCellConfig",
    "GatedDeltaCell", "GatedDeltaCellConfig", "DeltaMemoryConfig",
    "HybridCell", "HybridCellConfig",
    "HFDecoderLayerCell", "HFDecoderLayerCellConfig",
]
