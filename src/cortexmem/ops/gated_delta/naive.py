"""Reference gated delta rule (Gated DeltaNet, Yang, Kautz & Hatamizadeh 2024): an obvious loop over time.

Per head, with the state stored as ``S [Dk, Dv]`` (the transpose of the paper's ``[Dv, Dk]``)::

    S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T = a_t S_{t-1} + b_t k_t (v_t - a_t S_{t-1}^T k_t)^T
    o_t = S_t^T q_t

This is the paper's form: the erase term reads the *decayed* state ``a_t S_{t-1}`` (the original Cortex README
erases with the undecayed state; we follow the paper, which is also what fla implements).

Conventions shared by every gated-delta op in this package (fla-compatible):

* ``g = log a_t`` (the LOG decay, ``<= 0``), not ``a_t`` itself: the chunked form works with cumulative
  sums of ``g``, and ``a_t -> 0`` stays finite. Pass ``alpha.log()`` if you hold ``a_t``.
* ``beta`` is post-sigmoid, in ``[0, 1]``.
* q and k are used as given: the caller L2-normalises them (the cells do); there is no ``1/sqrt(Dk)`` scale.
* ``resets[b, t] = True`` zeroes row ``b``'s state before step ``t`` (equivalently ``g_t = -inf``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_gated_delta_inputs
from .recurrent import gated_delta_rule_step


def gated_delta_rule_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    output_final_state: bool = True,
    resets: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """q, k ``[B, T, NH, Dk]``; v ``[B, T, NH, Dv]``; g, beta ``[B, T, NH]``; state ``[B, NH, Dk, Dv]``.

    Returns ``(o [B, T, NH, Dv], final_state or None)``.
    """
    check_gated_delta_inputs(q, k, v, g, beta, initial_state, resets)
    B, T, NH, Dk = k.shape
    S = initial_state
    if S is None:
        S = torch.zeros(B, NH, Dk, v.shape[-1], dtype=v.dtype, device=v.device)
    outs = []
    for t in range(T):
        o, S = gated_delta_rule_step(
            q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], S, None if resets is None else resets[:, t]
        )
        outs.append(o)
    return torch.stack(outs, dim=1), (S if output_final_state else None)
