"""The Triton backward of the gated delta rule on CPU, through Triton's (bounds-checked) interpreter: outputs and
the gradients of q, k, v, g, beta and the initial state vs autograd through the naive loop in fp64."""

from __future__ import annotations

import pytest
import torch

from tests.harness.metrics import rel_rms

pytest.importorskip("triton")

# (T, Dk, Dv, chunk, dtype, initial state, resets, output_final_state[, split]): partial last chunks (63, 130, 70),
# padded Dk/Dv (24/36/40), resets inside a chunk and at a chunk start (see ``_inputs``), with and without an initial
# state and a final-state gradient, every chunk size, bf16 cases (TF32 products); fp32 takes the intra-chunk kernel
# (3xTF32). ``split``: the reverse state kernel's dS in two key halves, forced at small Dk (the default from
# Dk > 64, as at Dk = 72: padded to 128, split in the recompute too)
CASES = [
    (63, 24, 40, 16, torch.float32, True, True, True),
    (130, 24, 40, 16, torch.float32, False, True, False),
    (37, 16, 16, 16, torch.float32, True, False, False),
    (70, 32, 48, 32, torch.float32, True, True, True),
    (70, 16, 24, 64, torch.float32, True, True, True),
    (63, 24, 40, 16, torch.bfloat16, True, True, True),
    (130, 40, 24, 32, torch.float32, True, True, True, True),
    (63, 36, 40, 16, torch.bfloat16, True, True, True, True),
    (70, 72, 24, 64, torch.float32, True, True, True),
]
NAMES = ("q", "k", "v", "g", "beta", "initial_state")


def _outputs_and_grads(fn, inputs, r, with_s0, final, seed):
    """``[o, final state or None]`` and the gradients of a fixed random projection of them w.r.t. every input."""
    leaves = [x.clone().requires_grad_(True) for x in inputs]
    s0 = leaves[5] if with_s0 else None
    o, s = fn(*leaves[:5], initial_state=s0, output_final_state=final, resets=r)
    gen = torch.Generator().manual_seed(seed)
    loss = (o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum()
    if final:
        loss = loss + (s.double() * torch.randn(s.shape, generator=gen, dtype=torch.float64)).sum()
    grads = torch.autograd.grad(loss, leaves[:6] if with_s0 else leaves[:5])
    return [o, s], grads


def _run_cases() -> dict:
    """In the child process (interpreter on, bounds checked): relative RMS errors of every output and gradient."""
    from tests.harness.triton_interpreter import patch_interpreter, refusal
    from tests.ops.gated_delta import test_triton_interpret as ti

    patch_interpreter()
    from functools import partial

    from cortexmem.ops.gated_delta import gated_delta_rule_naive, triton_bwd
    from cortexmem.ops.gated_delta.triton_bwd import triton_gated_delta_rule_autograd

    default_config = triton_bwd.backward_config
    out = {}
    for i, (T, Dk, Dv, chunk, dtype, with_s0, with_resets, final, *split) in enumerate(CASES):
        triton_bwd.backward_config = (lambda *a: dict(default_config(*a), split=True)) if split else default_config
        q, k, v, g, beta, s0, r = ti._inputs(T, Dk, Dv, T + Dk + i, with_resets)
        inputs = [t.to(dtype) for t in (q, k, v, g, beta, s0)]
        fn = partial(triton_gated_delta_rule_autograd, chunk_size=chunk)
        (o, s), grads = _outputs_and_grads(fn, inputs, r, with_s0, final, i)
        (o_ref, s_ref), grads_ref = _outputs_and_grads(gated_delta_rule_naive, [t.double() for t in inputs], r,
                                                       with_s0, final, i)
        dtypes_ok = o.dtype == dtype and all(gr.dtype == dtype for gr in grads) and (s is None) == (not final)
        errs = {"o": rel_rms(o, o_ref)}
        if final:
            errs["final_state"] = rel_rms(s, s_ref)
        errs.update({f"d{name}": rel_rms(a, b) for name, a, b in zip(NAMES, grads, grads_ref, strict=False)})
        out[i] = {"errs": errs, "dtypes_ok": dtypes_ok, "n_grads": len(grads)}
    triton_bwd.backward_config = default_config
    q, k, v, g, beta, _, _ = ti._inputs(20, 16, 16, 3, False)
    out["bad_chunk"] = refusal(lambda: triton_gated_delta_rule_autograd(q, k, v, g, beta, chunk_size=8))
    return out


@pytest.mark.parametrize("case", range(len(CASES)))
def test_interpreted_triton_backward_matches_naive(interpreted, case):
    res = interpreted[str(case)]
    with_s0, final = CASES[case][5], CASES[case][7]
    assert res["dtypes_ok"]
    assert res["n_grads"] == (6 if with_s0 else 5)
    expected = {"o", *(f"d{n}" for n in NAMES[: 6 if with_s0 else 5])} | ({"final_state"} if final else set())
    assert set(res["errs"]) == expected
    tol = 1e-5 if CASES[case][4] == torch.float32 else 2e-2
    bad = {name: err for name, err in res["errs"].items() if not err <= tol}
    assert not bad, f"relative RMS errors above {tol}: {bad}"


def test_interpreted_triton_backward_rejects_chunk_size(interpreted):
    assert "chunk_size must be 16, 32 or 64, got 8" in interpreted["bad_chunk"]
