"""GRU: ``naive`` (step loop, the reference), ``torch`` (``nn.GRU`` over the segments between resets)."""

from torch import nn

from ..lstm.recurrent import register_rnn
from .naive import gru_naive
from .recurrent import gru_segmented

register_rnn("gru", nn.GRU, gru_segmented, gru_naive, gates=3, n_states=1)

__all__ = ["gru_naive", "gru_segmented"]
