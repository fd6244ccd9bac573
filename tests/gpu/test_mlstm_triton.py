"""GPU parity: the Triton chunkwise mLSTM (forward and backward) vs the torch path, op and cell level.

At the cell's real shape (NH=4, dk=64, dv=128, chunk 64), odd T=257 (a one-step last chunk), resets at t=0 and
mid-sequence, a nonzero initial state: outputs, final states and the gradients of every input (C0, n0, m0 too).
The truth is the torch path in fp64; Triton must be within the tolerance or, where fp32 itself is that far off
(some gradients of the stabiliser's ``m`` are sums of cancelling terms), no worse than twice the fp32 torch path.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.harness.metrics import rel_rms

pytestmark = pytest.mark.gpu

NAMES = ["h", "C", "n", "m", "dq", "dk", "dv", "dlog_i", "dlog_f", "dC0", "dn0", "dm0"]


def _inputs(B, T, NH, dk, dv, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, NH, T, dk, generator=g)
    k = torch.randn(B, NH, T, dk, generator=g) / dk**0.5
    v = torch.randn(B, NH, T, dv, generator=g)
    log_i = torch.randn(B, NH, T, generator=g)
    log_f = F.logsigmoid(torch.randn(B, NH, T, generator=g) + 3)
    C0 = torch.randn(B, NH, dk, dv, generator=g)
    n0 = torch.rand(B, NH, dk, generator=g) + 0.5
    m0 = torch.randn(B, NH, generator=g)
    C0[0], n0[0], m0[0] = 0.0, 0.0, 0.0  # a fresh row
    r = torch.rand(B, T, generator=g) < 0.02
    r[0, 0] = r[-1, T // 2] = r[-1, 64] = True  # at t=0, mid-sequence, at a chunk start
    return [t.cuda() for t in (q, k, v, log_i, log_f, C0, n0, m0)], r.cuda()


def _run(fn, args, r, **kw):
    args = [a.detach().clone().requires_grad_() for a in args]
    h, (C, n, m) = fn(*args, r, **kw)
    outs = [h, C, n, m]
    g = torch.Generator(device="cuda").manual_seed(1)
    loss = sum((o.double() * torch.randn(o.shape, device="cuda", generator=g, dtype=torch.float64)).sum()
               for o in outs)
    return outs, list(torch.autograd.grad(loss, args))


def _check(got, truth, tol, peer=None):
    """Relative RMS error of each of ``got`` vs ``truth`` <= ``tol``, or <= twice that of ``peer``."""
    peer = peer or truth
    bad = {}
    for name, a, b, c in zip(NAMES, got, truth, peer, strict=True):
        err, floor = rel_rms(a, b), 2 * rel_rms(c, b)
        if not err <= max(tol, floor):
            bad[name] = (err, floor)
    assert not bad, f"relative RMS errors above {tol:g} (and twice the torch path's): {bad}"


# (B, T, NH, dk, dv, seed): the cell's shape; the widest heads (dk 120, dv 200, padded to 128 / 256: two dk tiles of
# the carry, several dk blocks in the other kernels)
@pytest.mark.parametrize("shape", [(4, 257, 4, 64, 128, 0), (2, 131, 2, 120, 200, 2)], ids=["cell", "widest"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mlstm_triton_matches_torch(dtype, shape):
    pytest.importorskip("triton")
    from cortexmem.ops.mlstm import mlstm_chunkwise
    from cortexmem.ops.mlstm.triton import mlstm_triton

    *dims, seed = shape
    args, r = _inputs(*dims, seed=seed)
    args = [a.to(dtype) for a in args]
    true_out, true_grad = _run(mlstm_chunkwise, [a.double() for a in args], r, chunk_size=64)
    ref_out, ref_grad = _run(mlstm_chunkwise, [a.float() for a in args], r, chunk_size=64)
    out, grad = _run(mlstm_triton, args, r, chunk_size=64)
    assert out[0].dtype == dtype and all(g.dtype == dtype for g in grad)
    _check(out + grad, true_out + true_grad, 1e-4 if dtype == torch.float32 else 3e-2, ref_out + ref_grad)


def test_mlstm_triton_matches_naive_fp64_small():
    pytest.importorskip("triton")
    from cortexmem.ops.mlstm import mlstm_naive
    from cortexmem.ops.mlstm.triton import mlstm_triton

    args, r = _inputs(3, 77, 2, 24, 40, seed=1)
    ref_out, ref_grad = _run(mlstm_naive, [a.double() for a in args], r)
    out, grad = _run(mlstm_triton, args, r, chunk_size=16)
    _check(out + grad, ref_out + ref_grad, 1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mlstm_cell_triton_backend_matches_torch_backend(dtype):
    pytest.importorskip("triton")
    import cortexmem

    torch.manual_seed(0)
    cfg = cortexmem.mLSTMCellConfig(hidden_size=512, num_heads=4, backend="torch")  # dk = 64, dv = 128
    truth = cortexmem.build_cell(cfg).cuda().double()
    ca = cortexmem.build_cell(cfg).cuda().to(dtype)
    cb = cortexmem.build_cell(cfg.model_copy(update={"backend": "triton"})).cuda().to(dtype)
    ca.load_state_dict(truth.state_dict())
    cb.load_state_dict(truth.state_dict())
    B, T = 4, 257
    x = torch.randn(B, T, 512, device="cuda", dtype=dtype)
    state = ca.init_state(B, device="cuda", dtype=dtype).apply(lambda s: torch.randn_like(s) * 0.5)
    r = torch.zeros(B, T, dtype=torch.bool, device="cuda")
    r[1, 100] = r[2, 64] = True
    results = []
    for cell in (truth, ca, cb):
        xx = x.clone().to(next(cell.parameters()).dtype).requires_grad_()
        st = state.apply(lambda s, cell=cell: s.clone().to(next(cell.parameters()).dtype).requires_grad_())
        y, new = cell(xx, st, resets=r)
        g = torch.Generator(device="cuda").manual_seed(3)
        loss = sum((o.double() * torch.randn(o.shape, device="cuda", generator=g, dtype=torch.float64)).sum()
                   for o in (y, *new.values()))
        leaves = [xx, *st.values(), *cell.parameters()]
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        results.append([y, *new.values(), *(g for g in grads if g is not None)])
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    true, torch_path, triton_path = results
    for i, (a, b, c) in enumerate(zip(triton_path, true, torch_path, strict=True)):
        err, floor = rel_rms(a, b), 2 * rel_rms(c, b)
        assert err <= max(tol, floor), (i, err, floor)


def test_mlstm_auto_takes_triton_on_cuda_for_sequences():
    pytest.importorskip("triton")
    from cortexmem.ops.registry import select_backend

    assert select_backend("mlstm", device="cuda", dtype=torch.float32, head_dim_qk=64, head_dim_v=128,
                          steps=257).name == "triton"
    assert select_backend("mlstm", device="cuda", dtype=torch.float32, head_dim_qk=64, head_dim_v=128,
                          steps=1).name == "torch"
    assert select_backend("mlstm", "triton", device="cuda", dtype=torch.bfloat16, head_dim_qk=64,
                          head_dim_v=128).name == "triton"
