"""Op ``mlstm``'s backend registry on CPU: auto picks torch here, triton fails loudly where it cannot run."""

from __future__ import annotations

import pytest
import torch

import cortexmem
from cortexmem.ops.mlstm import mlstm, mlstm_chunkwise, mlstm_naive, mlstm_sequence
from cortexmem.ops.registry import backends_for, check_requested, references, select_backend


def _by_backend(q, k, v, log_i, log_f, C0, n0, m0, resets=None, chunk_size=64, *, backend="auto"):
    """:func:`mlstm` (token-major) on the head-major inputs of :func:`mlstm_chunkwise`, outputs head-major."""
    t = [x.transpose(1, 2) for x in (q, k, v, log_i, log_f)]
    h, state = mlstm(*t, initial_state=(C0, n0, m0), resets=resets, chunk_size=chunk_size, backend=backend)
    return h.transpose(1, 2), state


def _inputs(T, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, NH, dk, dv = 2, 2, 8, 12
    q, k = torch.randn(B, NH, T, dk, generator=g), torch.randn(B, NH, T, dk, generator=g) / dk**0.5
    v = torch.randn(B, NH, T, dv, generator=g)
    log_i = torch.randn(B, NH, T, generator=g)
    log_f = torch.nn.functional.logsigmoid(torch.randn(B, NH, T, generator=g) + 3)
    C0, n0 = torch.randn(B, NH, dk, dv, generator=g), torch.rand(B, NH, dk, generator=g) + 0.5
    m0 = torch.randn(B, NH, generator=g)
    return [t.to(dtype) for t in (q, k, v, log_i, log_f, C0, n0, m0)]


def test_auto_picks_torch_on_cpu_and_triton_ranks_first_on_cuda():
    table = backends_for("mlstm")
    assert set(table) == {"torch", "triton"}
    assert table["triton"].priority > table["torch"].priority and not table["triton"].opt_in
    assert "one step" in table["triton"].supports(head_dim_qk=64, head_dim_v=128, steps=1)
    assert select_backend("mlstm", device="cpu", dtype=torch.float32).name == "torch"
    assert select_backend("mlstm", device="cpu", dtype=torch.bfloat16, head_dim_qk=64, head_dim_v=128).name == "torch"
    assert "mlstm" in references()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_explicit_triton_on_cpu_fails_clearly():
    with pytest.raises(ValueError, match="mlstm: backend 'triton' was requested but cannot run here"):
        check_requested("mlstm", "triton")
    with pytest.raises(ValueError, match="cannot run here"):
        _by_backend(*_inputs(5), backend="triton")
    with pytest.raises(ValueError, match="cannot run here"):
        cortexmem.build_cell(cortexmem.mLSTMCellConfig(hidden_size=16, backend="triton"))
    with pytest.raises(ValueError, match="unknown backend 'cuda-magic'"):
        cortexmem.build_cell(cortexmem.mLSTMCellConfig(hidden_size=16, backend="cuda-magic"))


def test_force_pytorch_hides_triton(monkeypatch):
    monkeypatch.setenv("CORTEX_FORCE_PYTORCH", "1")
    assert "disabled" in backends_for("mlstm")["triton"].unavailable_reason()
    with pytest.raises(ValueError, match="disabled by CORTEX_FORCE_PYTORCH"):
        check_requested("mlstm", "triton")
    assert select_backend("mlstm", device="cuda", dtype=torch.float32).name == "torch"


def test_triton_rejects_wide_heads_by_name():
    reason = backends_for("mlstm")["triton"].supports(head_dim_qk=192, head_dim_v=64)
    assert "dk=192" in reason and "128" in reason
    assert backends_for("mlstm")["triton"].supports(head_dim_qk=64, head_dim_v=128) is None


def test_torch_backend_is_the_chunkwise_op_and_one_step_at_t1():
    args = _inputs(19)
    h, state = _by_backend(*args, chunk_size=8, backend="torch")
    h_ref, state_ref = mlstm_chunkwise(*args, chunk_size=8)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=0)
    for a, b in zip(state, state_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    one = _inputs(1)
    h1, s1 = _by_backend(*one, backend="auto")
    h1_ref, s1_ref = mlstm_naive(*one)
    torch.testing.assert_close(h1, h1_ref, rtol=0, atol=0)
    torch.testing.assert_close(s1[2], s1_ref[2], rtol=0, atol=0)


def test_mlstm_sequence_is_a_deprecated_alias():
    args = _inputs(7)
    with pytest.warns(DeprecationWarning, match="use mlstm"):
        h, _ = mlstm_sequence(*args, chunk_size=8)
    torch.testing.assert_close(h, _by_backend(*args, chunk_size=8)[0], rtol=0, atol=0)


def test_torch_backend_runs_bf16_inputs_in_fp32():
    args = _inputs(21, torch.bfloat16)
    h, (C, n, m) = _by_backend(*args, chunk_size=8)
    h_ref, (C_ref, _, _) = mlstm_naive(*(a.double() for a in args))
    assert h.dtype == C.dtype == torch.bfloat16
    err = ((h.double() - h_ref).pow(2).mean().sqrt() / h_ref.pow(2).mean().sqrt()).item()
    assert err < 1e-2, err
    err_c = ((C.double() - C_ref).pow(2).mean().sqrt() / C_ref.pow(2).mean().sqrt()).item()
    assert err_c < 1e-2, err_c


def test_cell_backend_field_and_same_result():
    torch.manual_seed(0)
    auto = cortexmem.build_cell(cortexmem.mLSTMCellConfig(hidden_size=16, num_heads=2, chunk_size=8))
    explicit = cortexmem.build_cell(cortexmem.mLSTMCellConfig(hidden_size=16, num_heads=2, chunk_size=8,
                                                              backend="torch"))
    explicit.load_state_dict(auto.state_dict())
    x = torch.randn(3, 13, 16)
    y1, s1 = auto(x)
    y2, s2 = explicit(x)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(s1["C"], s2["C"], rtol=0, atol=0)
    assert explicit.backend == "torch" and auto.backend == "auto"


def test_mlstm_op_shared_layout_matches_naive_with_initial_state_grads():
    # the ops' shared vocabulary: [B, T, NH, D], initial_state / output_final_state, resets; odd sizes
    from cortexmem.ops.mlstm import mlstm

    g = torch.Generator().manual_seed(3)
    B, T, NH, dk, dv = 2, 37, 3, 5, 7
    q, k = (torch.randn(B, T, NH, dk, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, NH, dv, generator=g, dtype=torch.float64)
    log_i = torch.randn(B, T, NH, generator=g, dtype=torch.float64)
    log_f = torch.nn.functional.logsigmoid(torch.randn(B, T, NH, generator=g, dtype=torch.float64) + 2)
    C0 = torch.randn(B, NH, dk, dv, generator=g, dtype=torch.float64)
    n0 = torch.rand(B, NH, dk, generator=g, dtype=torch.float64) + 0.5
    m0 = torch.randn(B, NH, generator=g, dtype=torch.float64)
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[1, [4, 20]] = True
    leaves = [t.requires_grad_() for t in (q, k, v, log_i, log_f, C0, n0, m0)]

    def grads(h, state):
        loss = h.square().sum() + sum(s.square().sum() for s in state)
        return [h, *state, *torch.autograd.grad(loss, leaves)]

    h, state = mlstm(q, k, v, log_i, log_f, initial_state=(C0, n0, m0), resets=resets, chunk_size=16)
    h_ref, state_ref = mlstm_naive(*(t.transpose(1, 2) for t in (q, k, v, log_i, log_f)), C0, n0, m0, resets)
    assert h.shape == (B, T, NH, dv)
    for a, b in zip(grads(h, state), grads(h_ref.transpose(1, 2), state_ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    _, none = mlstm(q, k, v, log_i, log_f, output_final_state=False)
    assert none is None


@pytest.mark.parametrize("bad", ["log_i_head_major", "q_3d"])
def test_mlstm_op_names_the_wrong_argument_in_its_own_layout(bad):
    from cortexmem.ops.mlstm import mlstm

    q, v = torch.randn(2, 9, 3, 4), torch.randn(2, 9, 3, 5)
    gates = torch.randn(2, 9, 3)
    if bad == "q_3d":
        with pytest.raises(ValueError, match=r"q must be \[B, T, NH, Dk\]"):
            mlstm(q[0], q[0], v[0], gates[0], gates[0])
    else:
        with pytest.raises(ValueError, match=r"log_i must have shape \[2, 9, 3\]"):
            mlstm(q, q, v, gates.transpose(1, 2), gates)
