"""Fast GRU path: ``torch.nn.GRU`` (cuDNN on GPU) over the segments between reset columns.

The loop runs over the distinct time steps at which *any* row resets (usually few), never over time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def gru_segmented(gru: nn.GRU, x: Tensor, h0: Tensor, resets: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`gru_naive` with the weights of ``gru`` (``batch_first=True``)."""
    h = h0.transpose(0, 1)  # (L, B, H)
    if resets is not None and x.shape[1] == 1:  # one step: no host sync, so CUDA graphs can capture it
        h = torch.where(resets[None, :, 0, None], torch.zeros_like(h), h)
        resets = None
    if resets is None:
        y, h = gru(x, h.contiguous())
        return y, h.transpose(0, 1)
    cuts = torch.nonzero(resets.any(0)).flatten().tolist()
    bounds = sorted({0, *cuts, x.shape[1]})
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        h = torch.where(resets[None, :, start, None], torch.zeros_like(h), h)
        y, h = gru(x[:, start:end], h.contiguous())
        outs.append(y)
    return torch.cat(outs, dim=1), h.transpose(0, 1)
