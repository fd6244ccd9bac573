"""Fast paths vs naive references: outputs and gradients (incl. initial state), odd sizes, with resets."""

from __future__ import annotations

import pytest
import torch

from cortexmem.ops.causal_conv1d import causal_conv1d, causal_conv1d_naive
from cortexmem.ops.gru import gru_naive, gru_segmented
from cortexmem.ops.lstm import lstm_naive, lstm_segmented


def _resets(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, generator=g) < 0.1


def _grads(out, inputs):
    g = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in out)
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("T", [1, 2, 63, 64])
@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("mixing", [False, True])
@pytest.mark.parametrize("with_resets", [False, True])
def test_causal_conv1d_matches_naive(T, K, mixing, with_resets):
    torch.manual_seed(T * 10 + K)
    B, H = 3, 5
    x = torch.randn(B, T, H, dtype=torch.float64, requires_grad=True)
    w = torch.randn((H, H, K) if mixing else (H, K), dtype=torch.float64, requires_grad=True)
    b = torch.randn(H, dtype=torch.float64, requires_grad=True)
    s0 = torch.randn(B, K - 1, H, dtype=torch.float64, requires_grad=True)
    r = _resets(B, T, T) if with_resets else None
    out_f = causal_conv1d(x, w, b, s0, r)
    out_n = causal_conv1d_naive(x, w, b, s0, r)
    for a, c in zip(out_f, out_n, strict=True):
        torch.testing.assert_close(a, c, atol=1e-10, rtol=1e-10)
    for a, c in zip(_grads(out_f, [x, w, b, s0]), _grads(out_n, [x, w, b, s0]), strict=True):
        torch.testing.assert_close(a, c, atol=1e-10, rtol=1e-10)


def test_causal_conv1d_short_input_keeps_old_buffer():
    # T < K - 1: the new buffer must still hold the older inputs (a peer library dropped them)
    s0 = torch.arange(1.0, 7.0).view(1, 3, 2)
    x = torch.full((1, 1, 2), 9.0)
    _, s = causal_conv1d(x, torch.ones(2, 4), None, s0)
    assert torch.equal(s, torch.tensor([[[3.0, 4.0], [5.0, 6.0], [9.0, 9.0]]]))


@pytest.mark.parametrize("T", [1, 63])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("with_resets", [False, True])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_segmented_matches_naive(kind, T, layers, with_resets):
    # nn.LSTM / nn.GRU over the segments between resets vs the per-step reference; the LSTM also carries c0
    torch.manual_seed(T + layers)
    B, H = 4, 6
    rnn = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(H, H, num_layers=layers, batch_first=True).double()
    x = torch.randn(B, T, H, dtype=torch.float64, requires_grad=True)
    n_states = 2 if kind == "lstm" else 1  # (h0, c0) or h0
    states = [torch.randn(B, layers, H, dtype=torch.float64, requires_grad=True) for _ in range(n_states)]
    r = _resets(B, T, 5) if with_resets else None
    if r is not None and T > 1:
        r[:, 0] = False
        r[1, T // 2] = True
    weights = [tuple(getattr(rnn, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
               for k in range(layers)]
    fast, naive = (lstm_segmented, lstm_naive) if kind == "lstm" else (gru_segmented, gru_naive)
    out_f = fast(rnn, x, *states, r)
    out_n = naive(x, weights, *states, r)
    for a, c in zip(out_f, out_n, strict=True):
        torch.testing.assert_close(a, c, atol=1e-10, rtol=1e-10)
    params = [x, *states, *rnn.parameters()]
    for a, c in zip(_grads(out_f, params), _grads(out_n, params), strict=True):
        torch.testing.assert_close(a, c, atol=1e-10, rtol=1e-10)


def test_every_op_package_is_registered_with_a_reference():
    import pkgutil

    from cortexmem import ops
    from cortexmem.ops.registry import list_backends, references

    packages = {m.name for m in pkgutil.iter_modules(ops.__path__) if m.ispkg}
    table = list_backends()
    missing = sorted(p for p in packages if not any(op == p or op.startswith(f"{p}_") for op in table))
    assert not missing, f"op packages that register no op named after them: {missing}"
    assert set(table) <= set(references()), f"ops without a reference: {sorted(set(table) - set(references()))}"


@pytest.mark.parametrize("op", ["agalite", "gru", "hadamard", "lstm", "xl_attention"])
def test_torch_only_ops_pass_their_doctor_row_on_cpu(op):
    from cortexmem.tools.doctor import check_row

    row = check_row(op, "torch", "cpu", "float32")
    assert row.status == "pass", row
    assert row.max_err_grad is not None and row.max_err_grad < 1e-5, row
