"""Feed-forward pieces shared by blocks: gated FFN and the GTrXL GRU-style gate."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GatedFFN(nn.Module):
    """``down(gelu(W_a x) * W_b x)``: a gated feed-forward of inner width ``inner``."""

    def __init__(self, d: int, inner: int) -> None:
        super().__init__()
        self.up = nn.Linear(d, 2 * inner)
        self.down = nn.Linear(inner, d)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.up(x).chunk(2, dim=-1)
        return self.down(nn.functional.gelu(a) * b)


class GRUGate(nn.Module):
    """GTrXL gating ``g(x, y)``: a GRU update of the residual ``x`` by the sublayer output ``y``.

    The update-gate bias starts at ``bias`` (> 0), so at init the gate passes mostly ``x`` (near identity).
    """

    def __init__(self, d: int, bias: float = 2.0) -> None:
        super().__init__()
        self.w = nn.Linear(d, 3 * d, bias=False)  # W_r, W_z, W_g applied to y
        self.u_rz = nn.Linear(d, 2 * d, bias=False)  # U_r, U_z applied to x
        self.u_g = nn.Linear(d, d, bias=False)  # U_g applied to r * x
        self.bias = nn.Parameter(torch.full((d,), float(bias)))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        # few launches: the U_r/U_z and U_g products accumulate onto slices of W y (addmm), r and z share
        # one sigmoid (the z bias padded with zeros for r), and (1 - z) x + z h = x + z (h - x) is one addcmul
        d = x.shape[-1]
        x2, y2 = x.reshape(-1, d), y.reshape(-1, d)
        wy = y2 @ self.w.weight.t()
        rz = torch.addmm(wy[:, : 2 * d], x2, self.u_rz.weight.t())
        r, z = torch.sigmoid(rz - nn.functional.pad(self.bias, (d, 0))).chunk(2, dim=-1)
        h = torch.tanh(torch.addmm(wy[:, 2 * d :], r * x2, self.u_g.weight.t()))
        return torch.addcmul(x2, z, h - x2).view(x.shape)
