"""One token of the gated delta rule (decoding): ``S <- a S + k (b (v - a S^T k))^T``, ``o = S^T q``."""

from __future__ import annotations

import torch
from torch import Tensor


def gated_delta_rule_step(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor, reset: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """q, k ``[B, NH, Dk]``; v ``[B, NH, Dv]``; g (= log alpha), beta ``[B, NH]``; state ``[B, NH, Dk, Dv]``.

    ``reset[b]`` zeroes row ``b``'s state before the update. Returns ``(o [B, NH, Dv], new_state)``.
    """
    if reset is not None:
        state = torch.where(reset.bool()[:, None, None, None], torch.zeros_like(state), state)
    decayed = state * g.exp()[..., None, None]  # a_t S_{t-1}
    pred = torch.einsum("bhkv,bhk->bhv", decayed, k)  # what the decayed memory returns for k_t
    delta = beta[..., None] * (v - pred)
    new_state = decayed + k[..., :, None] * delta[..., None, :]
    o = torch.einsum("bhkv,bhk->bhv", new_state, q)
    return o, new_state
