"""GPU parity of the Triton backward of the gated delta rule (backend ``triton_autograd``, bf16 and fp32):
outputs and the gradients of every input vs autograd through the torch chunk path (fp32 on the same, upcast,
inputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.harness.metrics import rel_rms

pytestmark = pytest.mark.gpu


def _inputs(B, T, NH, D, with_resets, seed=0):
    g = torch.Generator().manual_seed(seed + T + D)
    q = F.normalize(torch.randn(B, T, NH, D, generator=g), dim=-1)
    k = F.normalize(torch.randn(B, T, NH, D, generator=g), dim=-1)
    v = torch.randn(B, T, NH, D, generator=g)
    gate = F.logsigmoid(torch.randn(B, T, NH, generator=g) + 3)
    beta = torch.rand(B, T, NH, generator=g)
    s0 = torch.randn(B, NH, D, D, generator=g)
    r = None
    if with_resets:
        r = torch.rand(B, T, generator=g) < 0.01
        r[0, 64] = r[1, 100] = True  # a chunk start and inside a chunk
        r = r.cuda()
    return [t.cuda() for t in (q, k, v, gate, beta, s0)], r


def _outputs_and_grads(fn, inputs, r, final=True):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    o, s = fn(*leaves[:5], initial_state=leaves[5], resets=r, output_final_state=final)
    g = torch.Generator(device="cuda").manual_seed(1)
    loss = (o.float() * torch.randn(o.shape, generator=g, device="cuda")).sum()
    if final:
        loss = loss + (s.float() * torch.randn(s.shape, generator=g, device="cuda")).sum()
    return [o, s], torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_resets", [False, True])
def test_triton_backward_matches_torch_chunk(D, dtype, with_resets):
    pytest.importorskip("triton")
    from cortexmem.ops.gated_delta import chunk_gated_delta_rule, gated_delta_rule
    from cortexmem.ops.gated_delta.triton_bwd import triton_gated_delta_rule_autograd

    inputs, r = _inputs(2, 1000, 4, D, with_resets)
    inputs = [t.to(dtype) for t in inputs]

    def ours(*a, **kw):
        if dtype == torch.bfloat16:
            return gated_delta_rule(*a, backend="triton_autograd", **kw)
        return triton_gated_delta_rule_autograd(*a, **kw)

    (o, s), grads = _outputs_and_grads(ours, inputs, r)
    (o_ref, s_ref), grads_ref = _outputs_and_grads(chunk_gated_delta_rule, [t.float() for t in inputs], r)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    errs = {"o": rel_rms(o, o_ref), "final_state": rel_rms(s, s_ref)}
    errs.update({f"d{n}": rel_rms(a, b) for n, a, b in zip(("q", "k", "v", "g", "beta", "s0"), grads, grads_ref,
                                                              strict=True)})
    assert all(gr.dtype == dtype for gr in grads)
    bad = {n: e for n, e in errs.items() if not e <= tol}
    assert not bad, f"relative RMS errors above {tol}: {bad}"


# launch layouts of the backward besides the defaults (sm_90 spill-free: split dS at Dk > 64, the intra-chunk kernel
# for fp32): the dS halves forced at Dk = 64, and the fp32 state kernel without the intra-chunk kernel (the layout
# before; it spills on sm_90). Gradients vs the defaults' on the same inputs
@pytest.mark.parametrize("D,dtype,change", [
    (64, torch.float32, dict(split=True)), (64, torch.bfloat16, dict(split=True)),
    (128, torch.float32, dict(intra=None)), (64, torch.float32, dict(intra=None, split=False)),
])
def test_triton_backward_layouts_match_default(D, dtype, change):
    pytest.importorskip("triton")
    from cortexmem.ops.gated_delta import triton_bwd

    inputs, r = _inputs(2, 300, 4, D, True)
    q, k, v, g, beta, s0 = (t.to(dtype) for t in inputs)
    do, dsf = torch.randn_like(v), torch.randn_like(s0, dtype=torch.float32)
    args = (q, k, v, g, beta, s0, r, do, dsf)
    ref = triton_bwd.gated_delta_backward(*args, chunk_size=64, need_ds0=True)
    dot = triton_bwd.PRODUCTS[triton_bwd.backward_products(dtype)]
    cfg = dict(triton_bwd.backward_config(D, D, 8, dot), **change)
    got = triton_bwd.gated_delta_backward(*args, chunk_size=64, need_ds0=True, config=cfg)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    errs = {n: rel_rms(a, b) for n, a, b in zip(("q", "k", "v", "g", "beta", "s0"), got, ref, strict=True)}
    assert all(e <= tol for e in errs.values()), errs


@pytest.mark.parametrize("chunk_size", [16, 32, 64])
def test_triton_backward_odd_dims_and_no_final_state(chunk_size):
    pytest.importorskip("triton")
    from functools import partial

    from cortexmem.ops.gated_delta import chunk_gated_delta_rule
    from cortexmem.ops.gated_delta.triton_bwd import triton_gated_delta_rule_autograd

    torch.manual_seed(0)
    B, T, NH, Dk, Dv = 3, 77, 2, 72, 100  # padded to 128 inside
    q, k = (F.normalize(torch.randn(B, T, NH, Dk, device="cuda"), dim=-1) for _ in range(2))
    v = torch.randn(B, T, NH, Dv, device="cuda")
    g, beta = F.logsigmoid(torch.randn(B, T, NH, device="cuda") + 2), torch.rand(B, T, NH, device="cuda")
    s0 = torch.randn(B, NH, Dk, Dv, device="cuda")
    r = torch.rand(B, T, device="cuda") < 0.05
    inputs = [q, k, v, g, beta, s0]
    ours = partial(triton_gated_delta_rule_autograd, chunk_size=chunk_size)
    ref = partial(chunk_gated_delta_rule, chunk_size=chunk_size)
    (o, s), grads = _outputs_and_grads(ours, inputs, r, final=False)
    (o_ref, _), grads_ref = _outputs_and_grads(ref, inputs, r, final=False)
    assert s is None
    assert rel_rms(o, o_ref) <= 1e-4
    for a, b in zip(grads, grads_ref, strict=True):
        assert rel_rms(a, b) <= 1e-4


def test_gated_delta_cell_trains_through_triton_autograd():
    """bf16 cell gradients through the Triton backward are as close to an fp32 reference as the torch path's.

    Some parameter gradients of a bf16 cell are tiny (about 1e-7) and carry mostly bf16 rounding, so each is
    judged against the fp32 cell's: the Triton path's error may be at most twice the torch path's (or 3e-2)."""
    pytest.importorskip("triton")
    import cortexmem

    cfg = cortexmem.GatedDeltaCellConfig(hidden_size=128, num_heads=2, chunk_size=64)
    torch.manual_seed(0)
    ours = cortexmem.build_cell(cfg.model_copy(update={"backend": "triton_autograd"})).cuda().bfloat16()
    ref = cortexmem.build_cell(cfg.model_copy(update={"backend": "torch"})).cuda().bfloat16()
    ref32 = cortexmem.build_cell(cfg.model_copy(update={"backend": "torch"})).cuda()
    ref.load_state_dict(ours.state_dict())
    ref32.load_state_dict({k: t.float() for k, t in ours.state_dict().items()})
    x = torch.randn(2, 300, 128, device="cuda", dtype=torch.bfloat16)
    r = torch.rand(2, 300, device="cuda") < 0.01
    state0 = ours.init_state(2, device=x.device, dtype=x.dtype).apply(lambda t: t.detach().clone().normal_())
    grads = []
    for cell, dtype in ((ours, torch.bfloat16), (ref, torch.bfloat16), (ref32, torch.float32)):
        state = state0.apply(lambda t, d=dtype: t.to(d).requires_grad_())
        y, new = cell(x.to(dtype), state, resets=r)
        loss = y.float().pow(2).mean() + sum(t.float().pow(2).mean() for t in new.values())
        names = [*state.keys(), *(n for n, _ in cell.named_parameters())]
        leaves = [*state.values(), *cell.parameters()]
        grads.append(torch.autograd.grad(loss, leaves, allow_unused=True))
    checked = 0
    for name, a, b, c in zip(names, *grads, strict=True):
        if c is None:
            continue
        err_ours, err_torch = rel_rms(a, c), rel_rms(b, c)
        print(f"{name}: triton {err_ours:.2e}, torch {err_torch:.2e} (vs fp32)")
        assert err_ours <= max(3e-2, 2 * err_torch), name
        checked += 1
    assert checked >= 6


def test_auto_picks_triton_autograd_for_training_and_triton_for_inference():
    pytest.importorskip("triton")
    from cortexmem.ops.registry import select_backend

    bf16 = torch.bfloat16
    for dtype in (torch.float32, bf16):
        assert select_backend("gated_delta", device="cuda", dtype=dtype, chunk_size=64, needs_grad=True,
                              dk=128).name == "triton_autograd"
    for dtype in (torch.float32, bf16):
        pick = select_backend("gated_delta", device="cuda", dtype=dtype, chunk_size=64, needs_grad=False, dk=128)
        assert pick.name == "triton"
    # shapes beyond the kernels' limits: the torch path
    assert select_backend("gated_delta", device="cuda", dtype=bf16, chunk_size=64, needs_grad=True,
                          dk=256).name == "torch"


def test_triton_backward_refuses_heads_narrower_than_64_on_the_gpu():
    pytest.importorskip("triton")
    from cortexmem.ops.gated_delta.triton_bwd import triton_gated_delta_rule_autograd

    q = k = torch.randn(1, 8, 1, 16, device="cuda")
    g, beta = torch.zeros(1, 8, 1, device="cuda"), torch.ones(1, 8, 1, device="cuda")
    with pytest.raises(ValueError, match="heads of 64 to 128 dims, got Dk=16"):
        triton_gated_delta_rule_autograd(q, k, torch.randn(1, 8, 1, 64, device="cuda"), g, beta)


def test_bf16_padded_heads_go_to_torch():
    """bf16 heads the Triton kernels would pad (72 x 66): auto runs torch, a request for Triton is an error."""
    pytest.importorskip("triton")
    from cortexmem.ops.gated_delta import gated_delta_rule
    from cortexmem.ops.registry import select_backend

    for grad in (False, True):
        chosen = select_backend("gated_delta", device="cuda", dtype=torch.bfloat16, needs_grad=grad, chunk_size=64,
                                dk=72, dv=66)
        assert chosen.name == "torch"
    B, T, NH = 1, 70, 1
    q = k = F.normalize(torch.randn(B, T, NH, 72, device="cuda"), dim=-1).bfloat16()
    v = torch.randn(B, T, NH, 66, device="cuda").bfloat16()
    g = F.logsigmoid(torch.randn(B, T, NH, device="cuda")).bfloat16()
    beta = torch.rand(B, T, NH, device="cuda").bfloat16()
    for name in ("triton", "triton_autograd"):
        with pytest.raises(ValueError, match="heads of 64 or 128 dims"):
            gated_delta_rule(q, k, v, g, beta, backend=name)
    o, _ = gated_delta_rule(q, k, v, g, beta)
    assert o.shape == (B, T, NH, 66) and torch.isfinite(o).all()
