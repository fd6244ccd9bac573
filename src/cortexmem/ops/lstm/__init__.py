"""LSTM: ``naive`` (step loop, the reference), ``torch`` (``nn.LSTM`` over the segments between resets)."""

from torch import nn

from .naive import lstm_naive
from .recurrent import lstm_segmented, register_rnn

register_rnn("lstm", nn.LSTM, lstm_segmented, lstm_naive, gates=4, n_states=2)

__all__ = ["lstm_naive", "lstm_segmented"]
