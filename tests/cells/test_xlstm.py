"""mLSTMCell / sLSTMCell: cell-level parity with the naive op, steps == sequence, long inputs, configs."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import cortexmem
import cortexmem.cells.mlstm as mlstm_module
from cortexmem import CellConfig, build_cell, mLSTMCellConfig, sLSTMCellConfig
from cortexmem.ops.mlstm import mlstm_naive
from tests.harness.contract import CHECKS

H = 16


@pytest.mark.parametrize("cfg", [
    mLSTMCellConfig(hidden_size=H, num_heads=2, chunk_size=16),
    mLSTMCellConfig(hidden_size=H, num_heads=4, chunk_size=16, conv1d_kernel_size=0, forget_gate="exp"),
    sLSTMCellConfig(hidden_size=H, num_heads=2),
    sLSTMCellConfig(hidden_size=H, num_heads=4, conv1d_kernel_size=0, forget_gate="exp"),
], ids=["mlstm", "mlstm-noconv-exp", "slstm", "slstm-noconv-exp"])
def test_sequence_equals_steps_long(cfg):
    torch.manual_seed(0)
    cell = build_cell(cfg).eval()
    B, T = 3, 63
    x = torch.randn(B, T, H)
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, [5, 21, 37]] = True
    resets[2, 40] = True
    state0 = cell.init_state(B)
    _, state0 = cell(torch.randn(B, 9, H), state0)  # a real, non-fresh state
    y, s = cell(x, state0, resets=resets)
    st, ys = state0, []
    for t in range(T):
        yt, st = cell.step(x[:, t], st, resets=resets[:, t])
        ys.append(yt)
    assert (y - torch.stack(ys, 1)).abs().max() <= 1e-5
    for key in s.keys():  # relative: m can be large
        assert ((s[key] - st[key]).abs() / s[key].abs().clamp(min=1)).max() <= 1e-5, key


def test_mlstm_cell_chunkwise_matches_naive(monkeypatch):
    torch.manual_seed(1)
    cell = build_cell(mLSTMCellConfig(hidden_size=H, num_heads=2, chunk_size=16)).double()
    B, T = 2, 63
    x = torch.randn(B, T, H, dtype=torch.float64, requires_grad=True)
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[1, [7, 30]] = True
    state = cell.init_state(B, dtype=torch.float64).apply(lambda v: torch.randn_like(v).requires_grad_(True))
    leaves = [state[k] for k in state.keys()]

    def run():
        y, s = cell(x, state, resets=resets)
        loss = (y * torch.linspace(-1, 1, H, dtype=torch.float64)).sum() + sum(v.sum() for v in s.values())
        return [y, *s.values()], torch.autograd.grad(loss, [x, *leaves, *cell.parameters()])

    out_c, grads_c = run()
    def naive_op(q, k, v, log_i, log_f, *, initial_state, resets, **_):  # the op's [B, T, NH, D] layout
        h, state = mlstm_naive(*(t.transpose(1, 2) for t in (q, k, v, log_i, log_f)), *initial_state, resets)
        return h.transpose(1, 2), state

    monkeypatch.setattr(mlstm_module, "mlstm", naive_op)
    out_n, grads_n = run()
    for a, b in zip([*out_c, *grads_c], [*out_n, *grads_n], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def _large_gates(cell, scale):
    with torch.no_grad():
        for name in ("igate", "fgate"):
            lin = getattr(cell, name)
            lin.weight.mul_(scale)
            lin.bias.uniform_(-scale, scale)


def test_mlstm_cell_long_input_large_gates_finite():
    torch.manual_seed(2)
    cell = build_cell(mLSTMCellConfig(hidden_size=H, num_heads=2, chunk_size=64))
    _large_gates(cell, 40.0)
    x = torch.randn(1, 4096, H, requires_grad=True)
    y, s = cell(x)
    loss = y.pow(2).mean() + sum(v.sum() for v in s.values())
    grads = torch.autograd.grad(loss, [x, *cell.parameters()])
    assert torch.isfinite(y).all() and all(torch.isfinite(v).all() for v in s.values())
    assert all(torch.isfinite(g).all() for g in grads)


def test_slstm_cell_long_input_large_gates_finite():
    torch.manual_seed(3)
    cell = build_cell(sLSTMCellConfig(hidden_size=8, num_heads=2))
    _large_gates(cell, 40.0)
    with torch.no_grad():
        y, s = cell(torch.randn(1, 4096, 8))
    assert torch.isfinite(y).all() and all(torch.isfinite(v).all() for v in s.values())
    x = torch.randn(1, 256, 8, requires_grad=True)
    y, s = cell(x, s)
    grads = torch.autograd.grad(y.pow(2).mean(), [x, *cell.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("factory", [
    lambda: build_cell(mLSTMCellConfig(hidden_size=H, num_heads=4, chunk_size=4, conv1d_kernel_size=0,
                                       qk_dim_factor=1.0, v_dim_factor=2.0, forget_gate="exp")),
    lambda: build_cell(sLSTMCellConfig(hidden_size=H, num_heads=1, conv1d_kernel_size=2, forget_gate="exp")),
], ids=["mlstm-variant", "slstm-variant"])
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_contract_on_variants(factory, check):
    torch.manual_seed(0)
    check(factory().eval())


def test_state_keys_and_fresh_values():
    m = build_cell(mLSTMCellConfig(hidden_size=H, num_heads=2))
    assert set(m.init_state(2).keys()) == {"C", "n", "m", "conv"}
    assert set(build_cell(mLSTMCellConfig(hidden_size=H, conv1d_kernel_size=0)).init_state(2).keys()) == {"C", "n", "m"}
    s = build_cell(sLSTMCellConfig(hidden_size=H, num_heads=2))
    assert set(s.init_state(2).keys()) == {"h", "c", "n", "m", "conv"}
    for cell in (m, s):
        st = cell.init_state(2)
        assert all((v == 0).all() for v in st.values())  # documented: fresh state is all zeros
    assert tuple(m.init_state(2)["C"].shape) == (2, 2, 4, 8)


def test_projections_are_separate_linears():
    m = build_cell(mLSTMCellConfig(hidden_size=H, num_heads=2))
    for name in ("q_proj", "k_proj", "v_proj", "igate", "fgate", "ogate"):
        assert isinstance(getattr(m, name), nn.Linear), name
    s = build_cell(sLSTMCellConfig(hidden_size=H, num_heads=2))
    for name in ("igate", "fgate", "zgate", "ogate"):
        assert isinstance(getattr(s, name), nn.Linear), name


def test_config_errors_and_round_trip():
    with pytest.raises(ValueError, match=r"= 8 must be a positive multiple of num_heads=3"):
        build_cell(mLSTMCellConfig(hidden_size=H, num_heads=3))
    with pytest.raises(ValueError, match="num_heads=5"):
        build_cell(sLSTMCellConfig(hidden_size=H, num_heads=5))
    with pytest.raises(ValueError, match="hidden_size is None"):
        build_cell(mLSTMCellConfig())
    with pytest.raises(ValidationError):
        mLSTMCellConfig(hidden_size=H, forget_gate="tanh")
    with pytest.raises(ValidationError):
        sLSTMCellConfig(hidden_size=H, num_heads=0)
    for cfg in (mLSTMCellConfig(hidden_size=H, chunk_size=8, forget_gate="exp"), sLSTMCellConfig(num_heads=2)):
        back = CellConfig.model_validate_json(cfg.model_dump_json())
        assert type(back) is type(cfg) and back == cfg
    assert {"mLSTMCell", "sLSTMCell"} <= set(cortexmem.list_cells())


def test_bf16_state_keeps_the_same_memory():
    # m near 100 rounds to a 0.5 grid in bf16; C and n must be re-scaled so C * exp(m) is unchanged
    m = torch.tensor([[100.3, -57.1]])
    C = torch.randn(1, 2, 3, 4)
    m_r, (C_r,) = mlstm_module.store_stabilised(m, (C,), torch.bfloat16)
    assert m_r.dtype == C_r.dtype == torch.bfloat16
    true = C.double() * m.double().exp()[..., None, None]
    back = C_r.double() * m_r.double().exp()[..., None, None]
    assert ((back - true).abs() / true.abs()).max() < 1e-2
    assert mlstm_module.store_stabilised(m, (C,), torch.float32)[1][0] is C


def test_step_path_equals_chunk_path():
    # T = 1 runs the recurrent step; it must agree with the chunkwise path
    torch.manual_seed(4)
    cell = build_cell(mLSTMCellConfig(hidden_size=H, num_heads=2, chunk_size=8)).double()
    x = torch.randn(2, 2, H, dtype=torch.float64)
    _, s = cell(x[:, :1])
    y_step, s_step = cell(x[:, 1:], s)
    y_seq, s_seq = cell(x)
    torch.testing.assert_close(y_step, y_seq[:, 1:], rtol=1e-12, atol=1e-12)
    for key in s_seq.keys():
        torch.testing.assert_close(s_step[key], s_seq[key], rtol=1e-12, atol=1e-12)
