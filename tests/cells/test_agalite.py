"""AGaLiTeCell: the oscillator phase ``tau`` counts steps since the last reset."""

from __future__ import annotations

import torch

from cortexmem import AGaLiTeCell, AGaLiTeCellConfig


def test_cell_tau_counts_steps_and_resets():
    cell = AGaLiTeCell(AGaLiTeCellConfig(hidden_size=8, n_heads=2, eta=2, r=3, chunk_size=4))
    x = torch.randn(2, 7, 8)
    r = torch.zeros(2, 7, dtype=torch.bool)
    r[1, 4] = True
    _, s = cell(x, None, resets=r)
    assert s["tau"].tolist() == [7, 3]
