"""Recurrent cells. Importing this package registers every built-in cell."""

from .base import CellConfig, MemoryCell, build_cell
from .conv import CausalConv1dCell, CausalConv1dCellConfig
from .hf_layer import HFDecoderLayerCell, HFDecoderLayerCellConfig
from .lstm import LSTMCell, LSTMCellConfig

__all__ = [
    "CellConfig", "MemoryCell", "build_cell",
    "LSTMCell", "LSTMCellConfig",
    "CausalConv1dCell", "CausalConv1dCellConfig",
    "HFDecoderLayerCell", "HFDecoderLayerCellConfig",
]
