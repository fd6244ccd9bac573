"""The mLSTM Triton kernels (forward and backward) on CPU, through Triton's interpreter, vs the fp64 naive loop.

Outputs, final states and the gradients of every input (initial state included), with loads and stores checked
to stay inside their tensors. Odd T, chunk 16, head sizes padded to powers of two (dk = 72: two dk tiles of the
carry, several dk blocks in the other kernels), resets inside a chunk and at a chunk start, negative gates (the
normaliser's ``exp(-m)`` branch) and a stabiliser below ``-MAX_NEG_M`` (its clipped branch, the only place ``h``
depends on ``m``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.harness.metrics import rel_rms

pytest.importorskip("triton")

# (T, dk, dv, chunk, dtype, initial state, resets, gates)
CASES = [
    (63, 16, 16, 16, torch.float32, False, None, "normal"),
    (63, 24, 40, 16, torch.float32, True, None, "normal"),
    (37, 24, 40, 16, torch.float32, True, "mid+start", "normal"),
    (37, 16, 24, 16, torch.float32, True, "mid+start", "negative"),
    (29, 16, 16, 16, torch.float32, True, "mid+start", "clipped"),
    (63, 32, 32, 16, torch.bfloat16, True, "mid+start", "normal"),
    # dk padded to 128: two dk tiles of the carry, several dk blocks in every loop over dk
    (37, 72, 40, 16, torch.float32, True, "mid+start", "normal"),
    (20, 16, 16, 64, torch.float32, True, "mid+start", "normal"),
    (1, 16, 16, 64, torch.float32, True, None, "normal"),
]
NAMES = ["h", "C", "n", "m", "dq", "dk", "dv", "dlog_i", "dlog_f", "dC0", "dn0", "dm0"]


def _rms(x: torch.Tensor) -> float:
    return x.double().pow(2).mean().sqrt().item()


def _inputs(T, dk, dv, with_state, resets, gates, seed):
    g = torch.Generator().manual_seed(seed)
    B, NH = 2, 2
    q = torch.randn(B, NH, T, dk, generator=g)
    k = torch.randn(B, NH, T, dk, generator=g) / dk**0.5
    v = torch.randn(B, NH, T, dv, generator=g)
    log_i = torch.randn(B, NH, T, generator=g)
    log_f = F.logsigmoid(torch.randn(B, NH, T, generator=g) + 3)
    C0 = torch.randn(B, NH, dk, dv, generator=g) * with_state
    n0 = (torch.rand(B, NH, dk, generator=g) + 0.5) * with_state
    m0 = torch.randn(B, NH, generator=g) * with_state
    if gates == "negative":  # exp(-m) wins the normaliser
        log_i, log_f = log_i * 2 - 12, F.logsigmoid(torch.randn(B, NH, T, generator=g) - 1)
        m0 = m0 - 10
    elif gates == "clipped":  # -m beyond MAX_NEG_M: the clipped floor exp(80), h depends on m
        log_i, log_f, m0 = log_i - 90, F.logsigmoid(torch.randn(B, NH, T, generator=g) + 4), m0 - 86
    r = None
    if resets:
        r = torch.rand(B, T, generator=g) < 0.05
        r[0, 5] = r[1, 16] = r[1, T - 2] = True  # inside a chunk, at a chunk start (chunk 16), twice in one chunk
    return [q, k, v, log_i, log_f, C0, n0, m0], r


def _outputs_and_grads(fn, inputs, r, dtype, chunk):
    args = [a.to(dtype).clone().requires_grad_(True) for a in inputs]
    kw = {} if chunk is None else {"chunk_size": chunk}
    h, (C, n, m) = fn(*args, r, **kw)
    outs = [h, C, n, m]
    gg = torch.Generator().manual_seed(1)
    loss = sum((o.double() * torch.randn(o.shape, generator=gg, dtype=torch.float64)).sum() for o in outs)
    return outs, list(torch.autograd.grad(loss, args))


def _run_cases() -> dict:
    """In the child process (interpreter on): per case, relative RMS errors of every output and gradient."""
    from tests.harness.triton_interpreter import patch_interpreter, refusal

    patch_interpreter()
    from cortexmem.ops.mlstm import mlstm_naive
    from cortexmem.ops.mlstm.triton import mlstm_triton

    out = {}
    for i, (T, dk, dv, chunk, dtype, with_state, resets, gates) in enumerate(CASES):
        inputs, r = _inputs(T, dk, dv, with_state, resets, gates, seed=T + dk)
        inputs = [a.to(dtype) for a in inputs]  # the reference sees the same (rounded) inputs
        o1, g1 = _outputs_and_grads(mlstm_triton, inputs, r, dtype, chunk)
        o2, g2 = _outputs_and_grads(mlstm_naive, inputs, r, torch.float64, None)
        dtypes_ok = o1[0].dtype == dtype and all(g.dtype == dtype for g in g1)
        out[str(i)] = {"errors": [rel_rms(a, b) for a, b in zip(o1 + g1, o2 + g2, strict=True)],
                       "abs_errors": [_rms(a.double() - b) for a, b in zip(o1 + g1, o2 + g2, strict=True)],
                       "dtypes_ok": dtypes_ok, "finite": all(bool(t.isfinite().all()) for t in o1 + g1)}
    with torch.no_grad():  # the inference path (no autograd, h stored in the input dtype) gives the same outputs
        inputs, r = _inputs(37, 24, 40, True, "mid+start", "normal", seed=61)
        h, state = mlstm_triton(*inputs, r, chunk_size=16)
        h_ref, state_ref = mlstm_naive(*(a.double() for a in inputs), r)
        out["no_grad"] = [rel_rms(a, b) for a, b in zip((h, *state), (h_ref, *state_ref), strict=True)]
    out["too_wide"] = refusal(lambda: mlstm_triton(*_inputs(20, 160, 16, False, None, "normal", 0)[0]))
    return out


@pytest.mark.parametrize("case", range(len(CASES)))
def test_interpreted_mlstm_triton_matches_naive(interpreted, case):
    res = interpreted[str(case)]
    tol = 1e-4 if CASES[case][4] == torch.float32 else 3e-2
    assert res["finite"] and res["dtypes_ok"]
    errors = dict(zip(NAMES, res["errors"], strict=True))
    if not CASES[case][5]:
        # no initial state: d m0 is zero in exact arithmetic (the kernel gives 0, the reference cancellation noise)
        assert res["abs_errors"][NAMES.index("dm0")] <= 1e-9
        errors.pop("dm0")
    bad = {name: err for name, err in errors.items() if not err <= tol}
    assert not bad, f"relative RMS errors above {tol:g}: {bad}"


def test_interpreted_mlstm_triton_no_grad_and_bad_head_size(interpreted):
    assert max(interpreted["no_grad"]) <= 1e-4, interpreted["no_grad"]
    assert "dk <= 128" in interpreted["too_wide"] and "dk=160" in interpreted["too_wide"]
