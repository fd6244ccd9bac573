"""Recurrent cells. Importing this package registers every built-in cell."""

from .base import CellConfig, MemoryCell, build_cell
from .conv import CausalConv1dCell, CausalConv1dCellConfig
from .lstm import LSTMCell, LSTMCellConfig
from .mlstm import mLSTMCell, mLSTMCellConfig
from .slstm import sLSTMCell, sLSTMCellConfig

__all__ = [
    "CellConfig", "MemoryCell", "build_cell",
    "LSTMCell", "LSTMCellConfig",
    "CausalConv1dCell", "CausalConv1dCellConfig",
    "mLSTMCell", "mLSTMCellConfig",
    "sLSTMCell", "sLSTMCellConfig",
]
