"""mLSTM recurrence: ``naive`` (the specification), ``chunk`` (torch, chunkwise-parallel) and ``triton`` (CUDA).

Op ``mlstm`` has backends ``torch`` (the chunkwise op in at least fp32, one recurrent step when ``T == 1``) and
``triton`` (chunkwise kernels, forward and backward): ``auto`` takes it on CUDA for sequences (T > 1; on an
H100 the op's forward + backward ran 2.4x, the cell's 1.5x faster than torch at B=32 T=256) and keeps torch's one
recurrent step at T = 1. ``cortex doctor`` checks both against :func:`mlstm_naive`.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ...ops.registry import register_backend, register_reference, select_backend
from .chunk import mlstm_chunkwise
from .naive import mlstm_naive

MAX_TRITON_DK, MAX_TRITON_DV = 128, 256  # = triton.MAX_DK / MAX_DV, not imported here: CPU processes may lack triton


def mlstm_torch(
    q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor, C0: Tensor, n0: Tensor, m0: Tensor,
    resets: Tensor | None = None, chunk_size: int = 64,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """:func:`mlstm_chunkwise` (one :func:`mlstm_naive` step when ``T == 1``) in at least fp32; ``h`` in ``q``'s
    dtype, the state in ``C0``'s."""
    cdt = torch.promote_types(q.dtype, torch.float32)
    args = [t.to(cdt) for t in (q, k, v, log_i, log_f, C0, n0, m0)]
    if q.shape[2] == 1:  # one recurrent step is ~2.5x cheaper than a one-step chunk (step mode of agents)
        h, state = mlstm_naive(*args, resets)
    else:
        h, state = mlstm_chunkwise(*args, resets, chunk_size=chunk_size)
    return h.to(q.dtype), tuple(s.to(C0.dtype) for s in state)


def _triton(*args, **kwargs):
    from .triton import mlstm_triton

    return mlstm_triton(*args, **kwargs)


def _flat(fn):
    """``fn`` returning ``(h, C, n, m)`` flat, as the registry (and ``cortex doctor``) calls backends."""
    def flat(q, k, v, log_i, log_f, C0, n0, m0, resets=None, chunk_size=64):
        h, (C, n, m) = fn(q, k, v, log_i, log_f, C0, n0, m0, resets, chunk_size=chunk_size)
        return h, C, n, m
    flat.__name__ = f"{getattr(fn, '__name__', 'mlstm')}_flat"
    return flat


def _naive_flat(q, k, v, log_i, log_f, C0, n0, m0, resets=None, chunk_size=None):
    h, (C, n, m) = mlstm_naive(q, k, v, log_i, log_f, C0, n0, m0, resets)
    return h, C, n, m


def _head_dims_fit(head_dim_qk: int = 0, head_dim_v: int = 0, steps: int = 2, **_: object) -> str | None:
    if head_dim_qk > MAX_TRITON_DK or head_dim_v > MAX_TRITON_DV:
        return f"head sizes dk={head_dim_qk}, dv={head_dim_v} > {MAX_TRITON_DK}, {MAX_TRITON_DV}"
    if steps == 1:
        return "one step: torch's recurrent step"
    return None


register_backend("mlstm", "torch", _flat(mlstm_torch), priority=0,
                 note="chunkwise-parallel (mlstm_chunkwise) in fp32, autograd by torch; one naive step at T=1")
register_backend("mlstm", "triton", _flat(_triton), devices=frozenset({"cuda"}), priority=10, needs_triton=True,
                 dtypes=frozenset({torch.float32, torch.bfloat16, torch.float16}), supports=_head_dims_fit,
                 limits=f"dk <= {MAX_TRITON_DK}, dv <= {MAX_TRITON_DV}, T > 1",
                 note="chunkwise forward and backward kernels (CUDA)")


def _doctor_inputs(device: torch.device, dtype: torch.dtype) -> tuple:
    g = torch.Generator().manual_seed(0)
    B, NH, T, dk, dv = 3, 2, 29, 12, 20  # odd T: a partial last chunk; head sizes that pad
    q = torch.randn(B, NH, T, dk, generator=g)
    k = torch.randn(B, NH, T, dk, generator=g) / dk**0.5
    v = torch.randn(B, NH, T, dv, generator=g)
    log_i = torch.randn(B, NH, T, generator=g)
    log_f = torch.nn.functional.logsigmoid(torch.randn(B, NH, T, generator=g) + 3)
    C0 = torch.randn(B, NH, dk, dv, generator=g)
    n0 = torch.rand(B, NH, dk, generator=g) + 0.5
    m0 = torch.randn(B, NH, generator=g)
    C0[0], n0[0], m0[0] = 0.0, 0.0, 0.0  # one fresh row
    r = torch.rand(B, T, generator=g) < 0.1
    r[1, 16] = r[2, 5] = True  # a reset at a chunk start and one inside a chunk
    floats = tuple(t.to(device=device, dtype=dtype) for t in (q, k, v, log_i, log_f, C0, n0, m0))
    return (*floats, r.to(device), 16)


register_reference("mlstm", _naive_flat, _doctor_inputs)


def _head_major(
    q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor, C0: Tensor, n0: Tensor, m0: Tensor,
    resets: Tensor | None = None, chunk_size: int = 64, *, backend: str = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """The selected backend of op ``mlstm`` on head-major inputs (the contract of :func:`mlstm_chunkwise`)."""
    impl = select_backend("mlstm", backend, device=q.device, dtype=q.dtype, head_dim_qk=q.shape[-1],
                          head_dim_v=v.shape[-1], steps=q.shape[2] if backend == "auto" else 2)
    h, C, n, m = impl.fn(q, k, v, log_i, log_f, C0, n0, m0, resets, chunk_size)
    return h, (C, n, m)


def mlstm(
    q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor, *,
    initial_state: tuple[Tensor, Tensor, Tensor] | None = None, output_final_state: bool = True,
    resets: Tensor | None = None, chunk_size: int = 64, backend: str = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """The mLSTM op in the ops' shared vocabulary (the layout of :func:`cortexmem.ops.gated_delta.gated_delta_rule`).

    ``q, k`` ``[B, T, NH, Dk]``, ``v`` ``[B, T, NH, Dv]``, ``log_i, log_f`` ``[B, T, NH]``; ``initial_state``
    ``(C [B, NH, Dk, Dv], n [B, NH, Dk], m [B, NH])`` or ``None`` (zeros); ``resets`` ``[B, T]`` -> ``(h [B, T, NH,
    Dv], (C, n, m) or None)``. The backends work head-major (``[B, NH, T, D]``); the transposes here are views.
    """
    if q.dim() != 4:
        raise ValueError(f"mlstm: q must be [B, T, NH, Dk], got shape {list(q.shape)}")
    B, T, NH, dk = q.shape
    want = {"k": (B, T, NH, dk), "v": (B, T, NH, v.shape[-1]), "log_i": (B, T, NH), "log_f": (B, T, NH)}
    for name, t in zip(want, (k, v, log_i, log_f), strict=True):
        if tuple(t.shape) != want[name]:
            raise ValueError(f"mlstm: {name} must have shape {list(want[name])} ([B, T, NH, ...] like q), got "
                             f"{list(t.shape)}")
    if initial_state is None:
        dt = torch.promote_types(q.dtype, torch.float32)
        initial_state = (q.new_zeros(B, NH, dk, v.shape[-1], dtype=dt), q.new_zeros(B, NH, dk, dtype=dt),
                         q.new_zeros(B, NH, dtype=dt))
    h, state = _head_major(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), log_i.transpose(1, 2),
                           log_f.transpose(1, 2), *initial_state, resets, chunk_size, backend=backend)
    return h.transpose(1, 2), state if output_final_state else None


def mlstm_sequence(*args, **kwargs) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Deprecated: head-major ``[B, NH, T, D]`` form of :func:`mlstm` (use :func:`mlstm`, ``[B, T, NH, D]``)."""
    warnings.warn("cortexmem.ops.mlstm.mlstm_sequence is deprecated and will be removed: use mlstm(), which takes "
                  "[B, T, NH, D] inputs like every op", DeprecationWarning, stacklevel=2)
    return _head_major(*args, **kwargs)


__all__ = ["mlstm", "mlstm_chunkwise", "mlstm_naive", "mlstm_torch"]
