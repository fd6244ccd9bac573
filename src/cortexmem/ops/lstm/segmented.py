"""Fast LSTM path: ``torch.nn.LSTM`` (cuDNN on GPU) over the segments between reset columns.

The loop runs over the distinct time steps at which *any* row resets (usually few), never over time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def lstm_segmented(
    lstm: nn.LSTM, x: Tensor, h0: Tensor, c0: Tensor, resets: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as :func:`lstm_naive` with the weights of ``lstm`` (``batch_first=True``)."""
    h = h0.transpose(0, 1)  # (L, B, H)
    c = c0.transpose(0, 1)
    if resets is not None and x.shape[1] == 1:  # one step: no host sync, so CUDA graphs can capture it
        r = resets[None, :, 0, None]
        h, c = torch.where(r, torch.zeros_like(h), h), torch.where(r, torch.zeros_like(c), c)
        resets = None
    if resets is None:
        y, (h, c) = lstm(x, (h.contiguous(), c.contiguous()))
        return y, h.transpose(0, 1), c.transpose(0, 1)
    cuts = torch.nonzero(resets.any(0)).flatten().tolist()
    bounds = sorted({0, *cuts, x.shape[1]})
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        r = resets[None, :, start, None]
        h, c = torch.where(r, torch.zeros_like(h), h), torch.where(r, torch.zeros_like(c), c)
        y, (h, c) = lstm(x[:, start:end], (h.contiguous(), c.contiguous()))
        outs.append(y)
    return torch.cat(outs, dim=1), h.transpose(0, 1), c.transpose(0, 1)
