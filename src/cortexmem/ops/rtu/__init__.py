"""RTU ops. The diagonal scan has backends ``torch`` (log-depth parallel scan) and ``triton`` (CUDA, fused)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ...ops.registry import register_backend, register_reference, select_backend
from . import recurrent as _recurrent  # noqa: F401 - registers rtu_step_trace_w
from .chunk import inject_traces, rtu_final_traces, rtu_full_chunked, rtu_scan
from .naive import rtu_full_naive, rtu_naive


def rtu_scan_real(u: Tensor, lam: Tensor, c0: Tensor, resets: Tensor | None = None) -> Tensor:
    """:func:`rtu_scan` on real views: ``u [B, T, H, 2]``, ``lam [H, 2]``, ``c0 [B, H, 2]`` -> ``c [B, T, H, 2]``."""
    cplx = lambda v: torch.view_as_complex(v.contiguous())  # noqa: E731
    return torch.view_as_real(rtu_scan(cplx(u), cplx(lam), cplx(c0), resets))


def _naive_real(u: Tensor, lam: Tensor, c0: Tensor, resets: Tensor | None = None) -> Tensor:
    cplx = lambda v: torch.view_as_complex(v.contiguous())  # noqa: E731
    return torch.view_as_real(rtu_naive(cplx(u), cplx(lam), cplx(c0), resets)[0])


def _triton(*args, **kwargs):
    from .triton import rtu_scan_triton

    return rtu_scan_triton(*args, **kwargs)


# dtypes are those of the real parts: complex arithmetic has no half-precision types
register_backend("rtu_scan", "torch", rtu_scan_real, dtypes=frozenset({torch.float32, torch.float64}), priority=0,
                 note="log-depth parallel scan")
register_backend("rtu_scan", "triton", _triton, devices=frozenset({"cuda"}), dtypes=frozenset({torch.float32}),
                 priority=10, needs_triton=True, note="fused fwd/bwd loop over time")


def _doctor_inputs(device: torch.device, dtype: torch.dtype) -> tuple:
    g = torch.Generator().manual_seed(0)
    B, T, H = 3, 41, 24
    u = torch.randn(B, T, H, 2, generator=g)
    lam = torch.view_as_real(torch.polar(0.5 + 0.49 * torch.rand(H, generator=g), torch.rand(H, generator=g)))
    c0 = torch.randn(B, H, 2, generator=g)
    r = torch.rand(B, T, generator=g) < 0.1
    return tuple(t.to(device=device, dtype=dtype) for t in (u, lam, c0)) + (r.to(device),)


register_reference("rtu_scan", _naive_real, _doctor_inputs)


def rtu(u: Tensor, lam: Tensor, *, initial_state: Tensor | None = None, output_final_state: bool = True,
        resets: Tensor | None = None, backend: str = "auto") -> tuple[Tensor, Tensor | None]:
    """The diagonal RTU recurrence ``c_t = lam * c_{t-1} + u_t`` in the ops' shared vocabulary.

    Complex ``u`` ``[B, T, H]``, ``lam`` ``[H]``, ``initial_state`` ``[B, H]`` or ``None`` (zeros), ``resets``
    ``[B, T]`` (``c_{t-1} = 0`` where set) -> ``(c [B, T, H], c_T [B, H] or None)``, by the selected backend of op
    ``rtu_scan`` (the ``c`` of :func:`rtu_naive`).
    """
    if not u.is_complex() or u.dim() != 3:
        raise ValueError(f"rtu: u must be complex [B, T, H], got {u.dtype} of shape {list(u.shape)}")
    B, T, H = u.shape
    if not lam.is_complex() or tuple(lam.shape) != (H,):
        raise ValueError(f"rtu: lam must be complex [H] = {[H]}, got {lam.dtype} of shape {list(lam.shape)}")
    if initial_state is None:
        initial_state = u.new_zeros(B, H)
    elif tuple(initial_state.shape) != (B, H):
        raise ValueError(f"rtu: initial_state must be [B, H] = {[B, H]}, got {list(initial_state.shape)}")
    impl = select_backend("rtu_scan", backend, device=u.device, dtype=u.real.dtype)
    c = torch.view_as_complex(impl.fn(torch.view_as_real(u), torch.view_as_real(lam),
                                      torch.view_as_real(initial_state), resets))
    return c, (c[:, -1] if output_final_state else None)


def rtu_diag_scan(u: Tensor, lam: Tensor, c0: Tensor, resets: Tensor | None = None, *,
                  backend: str = "auto") -> Tensor:
    """Deprecated: the ``c`` of :func:`rtu` with the initial state passed positionally."""
    warnings.warn("cortexmem.ops.rtu.rtu_diag_scan is deprecated and will be removed: use rtu(u, lam, "
                  "initial_state=c0, resets=...)", DeprecationWarning, stacklevel=2)
    return rtu(u, lam, initial_state=c0, resets=resets, backend=backend, output_final_state=False)[0]


__all__ = [
    "rtu",
    "rtu_scan",
    "rtu_scan_real",
    "rtu_final_traces",
    "rtu_full_chunked",
    "inject_traces",
    "rtu_full_naive",
    "rtu_naive",
]
