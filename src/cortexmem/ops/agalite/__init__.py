"""AGaLiTe's oscillator-expanded linear attention: ``naive`` (step loop), ``torch`` (chunked gated scans)."""

from __future__ import annotations

import torch

from ..registry import register_backend, register_reference
from .chunk import agalite_chunked, gated_scan
from .naive import agalite_naive, oscillators

register_backend("agalite", "torch", agalite_chunked, priority=0, note="chunked Hillis-Steele gated scans")


def _doctor_inputs(device: torch.device, dtype: torch.dtype) -> tuple:
    g = torch.Generator().manual_seed(0)
    B, T, nh, F, dv, r = 2, 37, 2, 8, 6, 3
    phi_q, phi_k = (torch.rand(B, T, nh, F, generator=g) + 0.1 for _ in range(2))  # feature maps are positive
    v, beta_logit = torch.randn(B, T, nh, dv, generator=g), torch.randn(B, T, nh, dv, generator=g)
    gamma_logit = torch.randn(B, T, nh, F, generator=g)
    vt0, kt0 = torch.randn(B, nh, r, dv, generator=g), torch.rand(B, nh, r, F, generator=g)
    s0 = torch.rand(B, nh, F, generator=g) + 0.1
    floats = tuple(t.to(device=device, dtype=dtype) for t in (phi_q, phi_k, v, beta_logit, gamma_logit, vt0, kt0, s0))
    tau0 = torch.tensor([0, 5], device=device)
    resets = (torch.rand(B, T, generator=g) < 0.1).to(device)
    return floats + (tau0, resets)


register_reference("agalite", agalite_naive, _doctor_inputs)

__all__ = ["agalite_chunked", "agalite_naive", "gated_scan", "oscillators"]
