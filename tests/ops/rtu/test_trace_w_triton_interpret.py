"""The Axon step's dense-trace Triton kernel on CPU, through Triton's interpreter, vs the torch update (odd sizes)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

CASES = [(3, 37, 21, True, torch.float64), (2, 9, 130, False, torch.float64), (5, 16, 33, True, torch.float32)]


def _run_cases() -> dict:
    from tests.harness.triton_interpreter import patch_interpreter, refusal

    patch_interpreter()
    from cortexmem.ops.rtu.recurrent import trace_w_step_torch
    from cortexmem.ops.rtu.triton import trace_w_step_triton

    out = {}
    for i, (B, H, Z, with_keep, lam_dtype) in enumerate(CASES):
        g = torch.Generator().manual_seed(i)
        ew0, drive = torch.randn(B, 2, H, Z, generator=g), torch.randn(B, Z, generator=g)
        lam = torch.polar(0.9 + 0.099 * torch.rand(H, generator=g, dtype=torch.float64),
                          torch.rand(H, generator=g, dtype=torch.float64) * 3)
        lr, li = lam.real.to(lam_dtype), lam.imag.to(lam_dtype)
        keep = (torch.arange(B) % 2 == 0).to(lam_dtype) if with_keep else None
        ours = trace_w_step_triton(ew0, drive, lr, li, keep)
        ref = trace_w_step_torch(ew0, drive, lr, li, keep)
        dropped = bool(torch.equal(ours[1::2, :, :, :].double(),
                                   torch.stack([drive[1::2, None, :].expand(-1, H, -1),
                                                torch.zeros(ours[1::2, 0].shape)], 1).double())) if with_keep else True
        out[str(i)] = [(ours.double() - ref.double()).abs().max().item(), ours.dtype == ew0.dtype, dropped]
    out["bad"] = refusal(lambda: trace_w_step_triton(torch.zeros(2, 3, 4, 5), torch.zeros(2, 5), torch.zeros(4),
                                                     torch.zeros(4), None))
    return out


@pytest.mark.parametrize("case", range(len(CASES)))
def test_interpreted_trace_kernel_matches_torch(interpreted, case):
    err, keeps_dtype, reset_drops_trace = interpreted[str(case)]
    # float64 arithmetic rounds once to float32 on store: equal up to that rounding
    assert err <= (1e-6 if CASES[case][4] == torch.float64 else 1e-5)
    assert keeps_dtype and reset_drops_trace


def test_interpreted_trace_kernel_rejects_bad_shapes(interpreted):
    assert "expected ew0 [B, 2, H, Z]" in interpreted["bad"]
