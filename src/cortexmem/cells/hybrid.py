"""HybridCell: exact softmax attention over a sliding local window + a gated-delta memory of everything older.

Semantics (``W = window``; token ``t`` counts from the last reset):

* **Local part.** Token ``t`` attends causally (softmax, ``F.scaled_dot_product_attention``) to tokens
  ``max(t - W + 1, reset) .. t``: a *sliding* window of ``W`` tokens including itself. Logits are
  ``tau_h * <q_t, k_s>`` with the L2-normalised (post short-conv) q, k the memory also uses and a learned
  per-head temperature ``tau_h`` (initialised to ``sqrt(Dh)``, the logit scale of unit-variance q, k). No
  positional encoding; the short conv supplies order.
* **Memory part.** A token leaves the window exactly when it is written: at step ``t`` the gated delta
  memory ``S`` first writes token ``t - W`` (with that token's own k, v, decay and write strength), then is
  read with ``q_t``. So the memory holds exactly the tokens ``<= t - W`` and the window the
  rest: no token is counted twice or lost. Before ``W`` tokens have been seen the write is the identity.
* **Mix.** Per head ``h_t = m_t * RMSNorm_a(attn_t) + (1 - m_t) * RMSNorm(mem_t)`` with ``m_t = sigmoid(W_m x_t)``,
  then the output gate ``silu(W_g x_t)`` and projection, as in :class:`GatedDeltaCell`.
* **State** (constant in the number of tokens seen): ``S [B, NH, Dh, Dh]``; the last ``W`` tokens'
  ``k`` (normalised), ``v [B, W, NH, Dh]`` and write gates ``g, beta [B, W, NH]`` (oldest first, empty slots zero);
  ``n [B]`` (int64) = how many slots hold real tokens (``<= W``); ``conv`` with ``use_short_conv``.
* **Resets.** ``resets[b, t]`` empties ``S``, the window and ``conv`` before token ``t``: earlier tokens are
  neither attended to nor written later.

Sequence and step mode compute the same function: the sequence path batches the attention in query blocks
of ``min(W, T)`` (each block sees ``W + block`` keys) and runs the delayed writes through the chunked rule.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.registry import register_cell
from .gated_delta import DeltaMemoryCell, DeltaMemoryConfig


class HybridCellConfig(DeltaMemoryConfig):
    """Config of :class:`HybridCell` (token ``H``, in a ``PostUpBlock``)."""

    window: int = Field(default=512, ge=1)

    @classmethod
    def example(cls, hidden_size: int) -> HybridCellConfig:
        return cls(hidden_size=hidden_size, num_heads=2, chunk_size=8, window=4)


@register_cell(HybridCellConfig, token="H", block="PostUpBlockConfig", name="hybrid")
class HybridCell(DeltaMemoryCell):
    """Sliding-window softmax attention + gated-delta memory of the tokens that left the window."""

    def __init__(self, config: HybridCellConfig) -> None:
        super().__init__(config)
        self.window = config.window
        self.mix_proj = nn.Linear(self.hidden_size, self.num_heads)
        # Normalised q, k bound every logit by tau, so tau is learned. The raw post-conv SiLU q, k were ~0.2 per
        # element at init: logits ~0.03, attention uniform over the window, and recall never started to learn.
        self.log_tau = nn.Parameter(torch.full((self.num_heads,), 0.5 * math.log(self.head_dim)))
        # The window's output is normalised like the memory's: an average of many small post-SiLU values is
        # itself tiny, and it reached the residual stream at ~1% of its scale.
        self.attn_norm = nn.RMSNorm(self.head_dim)

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        dtype = dtype or torch.float32
        W, NH, Dh = self.window, self.num_heads, self.head_dim
        st = self._base_state(batch, device, dtype)
        st["k"] = torch.zeros(batch, W, NH, Dh, device=device, dtype=dtype)
        st["v"] = torch.zeros(batch, W, NH, Dh, device=device, dtype=dtype)
        st["g"] = torch.zeros(batch, W, NH, device=device, dtype=dtype)
        st["beta"] = torch.zeros(batch, W, NH, device=device, dtype=dtype)
        st["n"] = torch.zeros(batch, device=device, dtype=torch.int64)
        return TensorDict(st, batch_size=[batch], device=device)

    def forward_sequence(
        self, x: Tensor, state: TensorDict, resets: Tensor | None, *, beta_bias: Tensor | None = None
    ) -> tuple[Tensor, TensorDict]:
        B, T, _ = x.shape
        W = self.window
        q, k, v, conv = self.qkv(x, state.get("conv", None), resets)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        g, beta = self.write_gates(x, beta_bias)
        dt = q.dtype
        # the window extended by this call: index j < W is a carried slot, j = W + t is token t
        ext = {
            "k": torch.cat([state["k"].to(dt), k], 1), "v": torch.cat([state["v"].to(dt), v], 1),
            "g": torch.cat([state["g"].to(dt), g], 1), "beta": torch.cat([state["beta"].to(dt), beta], 1),
        }
        n = state["n"].clamp(0, W)
        seg = torch.zeros(B, T, dtype=torch.int64, device=x.device)
        if resets is not None:
            seg = resets.long().cumsum(1)
        seg_ext = torch.cat([torch.zeros(B, W, dtype=torch.int64, device=x.device), seg], 1)
        slot = torch.arange(W + T, device=x.device)
        valid_ext = slot >= (W - n)[:, None]  # carried slots hold real tokens only in the last n

        # memory: at step t write slot t (token t - W) if it is real and not cut off by a reset, then read q_t
        active = valid_ext[:, :T] & (seg_ext[:, :T] == seg)
        zero = torch.zeros((), dtype=dt, device=x.device)
        # carried log decays are <= 0 by construction; clamp so a foreign state cannot make the memory grow
        g_w = torch.where(active[..., None], ext["g"][:, :T].clamp(max=0.0), zero)
        b_w = torch.where(active[..., None], ext["beta"][:, :T], zero)
        mem, S = self.memory(q, ext["k"][:, :T], ext["v"][:, :T], g_w, b_w, state["S"], resets)

        q_attn = q * self.log_tau.exp().to(dt)[:, None]
        attn = self._local_attention(q_attn, ext["k"], ext["v"], seg, seg_ext, valid_ext)
        m = torch.sigmoid(self.mix_proj(x))[..., None]
        y = self.output(x, m * self.attn_norm(attn) + (1 - m) * self.o_norm(mem.to(dt)))

        if resets is None:
            n_new = (n + T).clamp(max=W)
        else:
            idx = torch.arange(T, device=x.device)
            last = torch.where(resets, idx, torch.full_like(idx, -1)).amax(1)  # -1: no reset in this call
            n_new = torch.where(last >= 0, T - last, n + T).clamp(max=W)
        sd = state["S"].dtype
        keep = torch.arange(W, device=x.device) >= (W - n_new)[:, None]  # empty slots are stored as zeros
        new = {
            name: torch.where(keep.view(B, W, *[1] * (ext[name].dim() - 2)), ext[name][:, T:], zero).to(sd)
            for name in ("k", "v", "g", "beta")
        }
        new.update(S=S.to(sd), n=n_new)
        if conv is not None:
            new["conv"] = conv.to(state["conv"].dtype)
        return y, TensorDict(new, batch_size=state.batch_size, device=state.device)

    def _local_attention(
        self, q: Tensor, k_ext: Tensor, v_ext: Tensor, seg: Tensor, seg_ext: Tensor, valid_ext: Tensor
    ) -> Tensor:
        """Sliding-window attention of ``q [B, T, NH, Dh]`` over ``k_ext, v_ext [B, W + T, NH, Dh]``."""
        B, T, NH, Dh = q.shape
        W = self.window
        Bq = min(W, T)
        nb = -(-T // Bq)
        pad = nb * Bq - T
        span = W + Bq  # keys seen by one query block
        # pad the time axis; padded keys carry segment -1 so no real query ever matches them
        k_ext = F.pad(k_ext, (0, 0, 0, 0, 0, pad))
        v_ext = F.pad(v_ext, (0, 0, 0, 0, 0, pad))
        seg_ext = F.pad(seg_ext, (0, pad), value=-1)
        valid_ext = F.pad(valid_ext, (0, pad), value=False)
        seg_q = F.pad(seg, (0, pad), value=-2)
        kb = k_ext.unfold(1, span, Bq)  # (B, nb, NH, Dh, span)
        vb = v_ext.unfold(1, span, Bq)
        sb = seg_ext.unfold(1, span, Bq)  # (B, nb, span)
        okb = valid_ext.unfold(1, span, Bq)
        i = torch.arange(Bq, device=q.device)[:, None]
        j = torch.arange(span, device=q.device)[None, :]
        band = (j > i) & (j <= i + W)  # key slot j of query i: tokens t - W + 1 .. t
        allow = band & (sb[:, :, None, :] == seg_q.view(B, nb, Bq, 1)) & okb[:, :, None, :]
        padded_q = (torch.arange(nb * Bq, device=q.device) >= T).view(1, nb, Bq, 1)
        allow = allow | (padded_q & (j == i + W))  # padded queries see themselves (never an empty row)
        qb = F.pad(q, (0, 0, 0, 0, 0, pad)).view(B, nb, Bq, NH, Dh).permute(0, 1, 3, 2, 4)
        out = F.scaled_dot_product_attention(
            qb.reshape(B * nb, NH, Bq, Dh),
            kb.permute(0, 1, 2, 4, 3).reshape(B * nb, NH, span, Dh),
            vb.permute(0, 1, 2, 4, 3).reshape(B * nb, NH, span, Dh),
            attn_mask=allow.reshape(B * nb, 1, Bq, span), scale=1.0,
        )
        return out.view(B, nb, NH, Bq, Dh).permute(0, 1, 3, 2, 4).reshape(B, nb * Bq, NH, Dh)[:, :T]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}"
