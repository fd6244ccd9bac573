"""The sLSTM Triton kernels (forward and backward) on CPU, through Triton's interpreter, vs the fp64 naive loop."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

CASES = [(1, False, "sigmoid"), (6, True, "exp"), (9, True, "sigmoid")]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / (b.double().norm() + 1e-12)).item()


def _run_cases() -> dict:
    from tests.harness.triton_interpreter import patch_interpreter

    patch_interpreter()
    from cortexmem.ops.slstm import _naive_flat
    from cortexmem.ops.slstm.triton import slstm_triton

    out = {}
    for i, (T, with_resets, forget) in enumerate(CASES):
        g = torch.Generator().manual_seed(T)
        B, NH, dh = 17, 2, 16  # B crosses a 16-row block
        H = NH * dh
        inputs = [torch.randn(B, T, 4, H, generator=g), torch.randn(4, NH, dh, dh, generator=g) / 4,
                  *(torch.randn(B, H, generator=g) for _ in range(2)), torch.rand(B, H, generator=g) + 0.5,
                  torch.randn(B, H, generator=g)]
        r = (torch.rand(B, T, generator=g) < 0.3) if with_resets else None
        res = []
        for fn, dt in ((slstm_triton, torch.float32), (_naive_flat, torch.float64)):
            args = [a.to(dt).clone().requires_grad_(True) for a in inputs]
            flat = [x for o in fn(*args, r, forget) for x in (o if isinstance(o, (tuple, list)) else [o])
                    if isinstance(x, torch.Tensor)]
            gg = torch.Generator().manual_seed(0)
            loss = sum((x.double() * torch.randn(x.shape, generator=gg, dtype=torch.float64)).sum() for x in flat)
            res.append((flat, torch.autograd.grad(loss, args)))
        (o1, g1), (o2, g2) = res
        out[str(i)] = [max(_rel(a, b) for a, b in zip(o1, o2, strict=True)),
                       max(_rel(a, b) for a, b in zip(g1, g2, strict=True))]
    return out


@pytest.mark.parametrize("case", range(len(CASES)))
def test_interpreted_slstm_triton_matches_naive(interpreted, case):
    err_out, err_grad = interpreted[str(case)]
    assert err_out <= 1e-5, err_out
    assert err_grad <= 1e-5, err_grad
