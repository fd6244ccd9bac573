"""Recurrent cells. Importing this package registers every built-in cell."""

import types as _types

from ..core.registry import register_cell_token as _register_cell_token
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

# These two belong in the @register_cell decorators of gated_delta.py and hybrid.py (token=..., block=..., name=...);
# they sit here only until the concurrent edits of those files land.
_register_cell_token(GatedDeltaCellConfig, "D", block="PreUpBlockConfig", name="gated_delta")
_register_cell_token(HybridCellConfig, "H", block="PostUpGatedBlockConfig", name="hybrid")

__all__ = sorted(n for n, v in globals().items() if not n.startswith("_") and not isinstance(v, _types.ModuleType))
