"""Recurrent cells. Importing this package registers every built-in cell."""

import types as _types

from .agalite import AGaLiTeCell, AGaLiTeCellConfig
from .axon import AxonCell, AxonCellConfig, AxonConfig
from .axon_layer import AxonLayer
from .base import CellConfig, MemoryCell, build_cell
from .conv import CausalConv1dCell, CausalConv1dCellConfig
from .gated_delta import DeltaMemoryConfig, GatedDeltaCell, GatedDeltaCellConfig
from .gru import GRUCell, GRUCellConfig
from .hf_layer import HFDecoderLayerCell, HFDecoderLayerCellConfig
from .hybrid import HybridCell, HybridCellConfig
from .lstm import LSTMCell, LSTMCellConfig
from .mlstm import mLSTMCell, mLSTMCellConfig
from .slstm import sLSTMCell, sLSTMCellConfig
from .xl import XLCell, XLCellConfig

__all__ = sorted(n for n, v in globals().items() if not n.startswith("_") and not isinstance(v, _types.ModuleType))
