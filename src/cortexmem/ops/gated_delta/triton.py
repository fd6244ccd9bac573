"""Triton forward (no autograd) of the chunkwise gated delta rule: kernel -> launcher -> public fn.

The intra-chunk terms (UT transform, decays, read-out weights; resets as exact ``-inf`` log-decay masks) come
from :func:`.chunk.chunk_terms`, batched over every chunk at once. One kernel then runs the only sequential
part: per (batch, head, block of ``Dv``) it keeps ``S [Dk, BV]`` in registers across chunks, forms the
pseudo-values ``u = U - W S``, writes ``o = (e^gamma q) S + P u`` and updates ``S <- e^gamma_C S + K_out^T u``.
Same contract as :func:`gated_delta_rule_naive`; used only when no gradient is needed (the selector checks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .checks import check_gated_delta_inputs, needs_grad, triton_rejects
from .chunk import chunk_terms


@triton.jit
def _dot(a, b, BF16_DOT: tl.constexpr):
    # one return: code after a return inside a constexpr ``if`` is still compiled (and fp32-only options fail)
    if BF16_DOT:
        r = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    else:
        r = tl.dot(a, b, input_precision="ieee")
    return r


@triton.jit
def _fwd_kernel(W, U, KO, QD, P, DC, S0, O, SF, N, DK: tl.constexpr, DV: tl.constexpr, C: tl.constexpr,
                BV: tl.constexpr, HAS_S0: tl.constexpr, BF16_DOT: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    rv = tl.program_id(1) * BV + tl.arange(0, BV)
    rc = tl.arange(0, C)
    rk = tl.arange(0, DK)
    s_off = bh * DK * DV + rk[:, None] * DV + rv[None, :]
    if HAS_S0:
        S = tl.load(S0 + s_off).to(tl.float32)
    else:
        S = tl.zeros((DK, BV), dtype=tl.float32)
    for n in range(N):
        chunk = bh * N + n
        ck = chunk * C * DK
        cv = chunk * C * DV
        w = tl.load(W + ck + rc[:, None] * DK + rk[None, :])
        u = tl.load(U + cv + rc[:, None] * DV + rv[None, :]) - _dot(w, S, BF16_DOT)
        qd = tl.load(QD + ck + rc[:, None] * DK + rk[None, :])
        p = tl.load(P + chunk * C * C + rc[:, None] * C + rc[None, :])
        o = _dot(qd, S, BF16_DOT) + _dot(p, u, BF16_DOT)
        tl.store(O + cv + rc[:, None] * DV + rv[None, :], o)
        ko_t = tl.load(KO + ck + rk[:, None] * C + rc[None, :])  # (DK, C): k_j e^(gamma_C - gamma_j), per column
        S = S * tl.load(DC + chunk) + _dot(ko_t, u, BF16_DOT)
    tl.store(SF + s_off, S)


def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _launch(W, U, KO, QD, P, DC, S0, *, block_v: int | None, num_warps: int | None, bf16_dot: bool):
    """Contiguous ``(B, NH, N, C, .)`` inputs (KO ``(.., DK, C)``) -> ``O (B, NH, N, C, DV)``, ``S (B, NH, DK, DV)``."""
    B, NH, N, C, DK = W.shape
    DV = U.shape[-1]
    BV = block_v or min(DV, 32 if DK >= 128 else 64)
    O = torch.empty(U.shape, dtype=torch.float32, device=U.device)
    SF = torch.empty(B, NH, DK, DV, dtype=torch.float32, device=W.device)
    grid = (B * NH, DV // BV)
    _fwd_kernel[grid](W, U, KO, QD, P, DC, S0 if S0 is not None else SF, O, SF, N, DK=DK, DV=DV, C=C, BV=BV,
                      HAS_S0=S0 is not None, BF16_DOT=bf16_dot, num_warps=num_warps or 4,
                      num_stages=1)  # S is loop-carried; 3-stage prefetch of fp32 tiles exceeds shared memory
    return O, SF


def triton_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    chunk_size: int = 64,
    initial_state: Tensor | None = None,
    output_final_state: bool = True,
    resets: Tensor | None = None,
    block_v: int | None = None,
    num_warps: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Forward only: same shapes as :func:`chunk_gated_delta_rule`; ``ValueError`` if a gradient is needed.

    fp32 inputs use IEEE fp32 products; bf16/fp16 inputs use bf16 products with an fp32
    state. ``Dk`` and ``Dv`` are zero-padded to powers of two >= 16 (exact: padded rows and columns stay 0).
    """
    check_gated_delta_inputs(q, k, v, g, beta, initial_state, resets)
    reason = triton_rejects(needs_grad=needs_grad(q, k, v, g, beta, initial_state), chunk_size=chunk_size)
    if reason:
        raise ValueError(f"gated delta rule, triton backend: {reason}")
    out_dtype = v.dtype
    B, T, NH, Dk = k.shape
    Dv = v.shape[-1]
    DK, DV = _pow2_at_least_16(Dk), _pow2_at_least_16(Dv)
    q, k = (F.pad(x, (0, DK - Dk)) for x in (q, k))
    v = F.pad(v, (0, DV - Dv))
    C = chunk_size
    q, k, decay, decay_in, U, W = chunk_terms(q, k, v, g, beta, resets, C, torch.float32)
    KO = (k * decay[..., -1, :, None]).transpose(-1, -2)  # (B, NH, N, DK, C): k_j e^(gamma_C - gamma_j)
    QD = q * decay_in[..., None]
    P = (q @ k.transpose(-1, -2)) * decay
    DC = decay_in[..., -1].contiguous()
    S0 = None
    if initial_state is not None:
        S0 = F.pad(initial_state.to(torch.float32), (0, DV - Dv, 0, DK - Dk)).contiguous()
    bf16_dot = out_dtype != torch.float32
    # the kernel rounds these product operands to bf16 anyway: storing them so halves its reads, same result
    op_dtype = torch.bfloat16 if bf16_dot else torch.float32
    W, KO, QD, P = (x.to(op_dtype).contiguous() for x in (W, KO, QD, P))
    O, SF = _launch(W, U.contiguous(), KO, QD, P, DC, S0, block_v=block_v, num_warps=num_warps, bf16_dot=bf16_dot)
    o = O.reshape(B, NH, -1, DV)[:, :, :T, :Dv].transpose(1, 2).to(out_dtype)
    return o, (SF[..., :Dk, :Dv].to(out_dtype) if output_final_state else None)
