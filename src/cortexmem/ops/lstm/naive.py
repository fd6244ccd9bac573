"""Reference multi-layer LSTM (PyTorch gate order i, f, g, o) as a loop over time with per-step resets."""

from __future__ import annotations

import torch
from torch import Tensor


def lstm_naive(
    x: Tensor,
    weights: list[tuple[Tensor, Tensor, Tensor | None, Tensor | None]],
    h0: Tensor,
    c0: Tensor,
    resets: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """x ``[B, T, I]``; ``weights[l] = (W_ih, W_hh, b_ih, b_hh)``; h0, c0 ``[B, L, H]``.

    ``resets[b, t]`` zeroes row ``b``'s ``h, c`` (all layers) before step ``t``. Returns ``(y, h_T, c_T)``.
    """
    h = list(h0.unbind(1))
    c = list(c0.unbind(1))
    outs = []
    for t in range(x.shape[1]):
        inp = x[:, t]
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
            hl, cl = h[layer], c[layer]
            if resets is not None:
                r = resets[:, t, None]
                hl = torch.where(r, torch.zeros_like(hl), hl)
                cl = torch.where(r, torch.zeros_like(cl), cl)
            gates = inp @ w_ih.T + hl @ w_hh.T
            if b_ih is not None:
                gates = gates + b_ih + b_hh
            i, f, g, o = gates.chunk(4, dim=-1)
            cl = torch.sigmoid(f) * cl + torch.sigmoid(i) * torch.tanh(g)
            hl = torch.sigmoid(o) * torch.tanh(cl)
            h[layer], c[layer] = hl, cl
            inp = hl
        outs.append(inp)
    return torch.stack(outs, dim=1), torch.stack(h, 1), torch.stack(c, 1)
