"""AGaLiTeCell: approximate gated linear transformer attention (Pramanik et al., 2023) as a recurrent cell.

Per head: keys/queries ``[d_k]`` expanded with a learned ``eta``-dim projection into
``phi(z) = relu(z) (x) relu(p)`` (``F = d_k * eta`` features), values ``[d_v]``, sigmoid gates ``beta``
(values) and ``gamma`` (key features). State: ``vt [B, nh, r, d_v]``, ``kt [B, nh, r, F]``,
``s [B, nh, F]`` and ``tau`` (int ``[B]``, steps since the episode start: the oscillator phases).
Sequences run the chunked parallel scan (:func:`~cortexmem.ops.agalite.agalite_chunked`); reference: ``agalite_naive``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.registry import register_cell
from ..ops.agalite import agalite_chunked
from .base import CellConfig, MemoryCell


class AGaLiTeCellConfig(CellConfig):
    n_heads: int = Field(default=4, ge=1)
    head_dim: int | None = Field(default=None, ge=1)
    eta: int = Field(default=4, ge=1)
    r: int = Field(default=4, ge=1)
    eps: float = Field(default=1e-5, gt=0.0)
    chunk_size: int = Field(default=32, ge=1)

    @classmethod
    def example(cls, hidden_size: int) -> AGaLiTeCellConfig:
        return cls(hidden_size=hidden_size, n_heads=2, eta=2, r=3, chunk_size=8)


@register_cell(AGaLiTeCellConfig, token="Ag", block="PostUpGatedBlockConfig", name="agalite")
class AGaLiTeCell(MemoryCell):
    def __init__(self, config: AGaLiTeCellConfig) -> None:
        super().__init__(config)
        H, nh = self.hidden_size, config.n_heads
        dh = config.head_dim or max(1, H // nh)
        self.n_heads, self.head_dim, self.eta, self.r = nh, dh, config.eta, config.r
        self.n_feat = dh * config.eta
        # q, k, v [d] each, key/query expansions p_k, p_q [eta] each, value gate [d] per head
        self.proj = nn.Linear(H, nh * (4 * dh + 2 * config.eta))
        self.gamma_proj = nn.Linear(H, nh * self.n_feat)
        self.out = nn.Linear(nh * dh, H)
        with torch.no_grad():  # start with slow forgetting: gates near sigmoid(-2)
            self.proj.bias.view(nh, -1)[:, 3 * dh : 4 * dh].fill_(-2.0)
            self.gamma_proj.bias.fill_(-2.0)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden_size}, heads={self.n_heads}x{self.head_dim}, eta={self.eta}, r={self.r}"

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        dtype = dtype or torch.float32
        nh, r = self.n_heads, self.r
        z = lambda *s: torch.zeros(batch, *s, device=device, dtype=dtype)  # noqa: E731
        return TensorDict(
            {
                "vt": z(nh, r, self.head_dim),
                "kt": z(nh, r, self.n_feat),
                "s": z(nh, self.n_feat),
                "tau": torch.zeros(batch, dtype=torch.int64, device=device),
            },
            batch_size=[batch],
            device=device,
        )

    def features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``x [B, T, H]`` -> ``phi_q, phi_k [B, T, nh, F]``, ``v, beta_logit [B, T, nh, d]``, gamma logit."""
        B, T, _ = x.shape
        nh, d, e = self.n_heads, self.head_dim, self.eta
        q, k, v, beta, pq, pk = self.proj(x).view(B, T, nh, -1).split([d, d, d, d, e, e], -1)
        phi = lambda a, p: (torch.relu(a)[..., :, None] * torch.relu(p)[..., None, :]).flatten(-2)  # noqa: E731
        gamma = self.gamma_proj(x).view(B, T, nh, self.n_feat)
        return phi(q, pq), phi(k, pk), v, beta, gamma

    def forward_sequence(
        self, x: Tensor, state: TensorDict, resets: Tensor | None
    ) -> tuple[Tensor, TensorDict]:
        # gated sums in half precision lose the slow-decay tails; compute them in float32 at least
        cdt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        feats = [f.to(cdt) for f in self.features(x)]
        o, vt, kt, s, tau = agalite_chunked(
            *feats,
            state["vt"].to(cdt),
            state["kt"].to(cdt),
            state["s"].to(cdt),
            state["tau"],
            resets,
            self.config.eps,
            self.config.chunk_size,
        )
        y = self.out(o.reshape(*x.shape[:2], -1).to(x.dtype))
        sd = state["vt"].dtype
        new = {"vt": vt.to(sd), "kt": kt.to(sd), "s": s.to(sd), "tau": tau}
        return y, TensorDict(new, batch_size=state.batch_size, device=state.device)
