"""Reference multi-layer GRU (PyTorch gate order r, z, n) as a loop over time with per-step resets."""

from __future__ import annotations

import torch
from torch import Tensor


def gru_naive(
    x: Tensor,
    weights: list[tuple[Tensor, Tensor, Tensor | None, Tensor | None]],
    h0: Tensor,
    resets: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """x ``[B, T, I]``; ``weights[l] = (W_ih, W_hh, b_ih, b_hh)``; h0 ``[B, L, H]``.

    ``resets[b, t]`` zeroes row ``b``'s ``h`` (all layers) before step ``t``. Returns ``(y, h_T)``.
    """
    h = list(h0.unbind(1))
    outs = []
    for t in range(x.shape[1]):
        inp = x[:, t]
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
            hl = h[layer]
            if resets is not None:
                hl = torch.where(resets[:, t, None], torch.zeros_like(hl), hl)
            gi, gh = inp @ w_ih.T, hl @ w_hh.T
            if b_ih is not None:
                gi, gh = gi + b_ih, gh + b_hh
            i_r, i_z, i_n = gi.chunk(3, dim=-1)
            h_r, h_z, h_n = gh.chunk(3, dim=-1)
            r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            hl = (1 - z) * n + z * hl
            h[layer] = hl
            inp = hl
        outs.append(inp)
    return torch.stack(outs, dim=1), torch.stack(h, 1)
