"""Recurrent cells. Importing this package registers every built-in cell."""

from .agalite import AGaLiTeCell, AGaLiTeCellConfig
from .axon import AxonCell, AxonCellConfig
from .axon_layer import AxonLayer
from .base import CellConfig, MemoryCell, build_cell
from .conv import CausalConv1dCell, CausalConv1dCellConfig
from .hf_layer import HFDecoderLayerCell, HFDecoderLayerCellConfig
from .lstm import LSTMCell, LSTMCellConfig
from .xl import XLCell, XLCellConfig

__all__ = [
    "CellConfig", "MemoryCell", "build_cell",
    "LSTMCell", "LSTMCellConfig",
    "CausalConv1dCell", "CausalConv1dCellConfig",
    "HFDecoderLayerCell", "HFDecoderLayerCellConfig",
    "AxonCell", "AxonCellConfig", "AxonLayer",
    "XLCell", "XLCellConfig",
    "AGaLiTeCell", "AGaLiTeCellConfig",
]
