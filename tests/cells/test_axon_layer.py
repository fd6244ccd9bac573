"""AxonLayer: sub-state under group/name in a parent TensorDict, no mutation, equals its AxonCell."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from cortexmem import AxonCellConfig, AxonLayer


def _parent(layer, B=2):
    return TensorDict(
        {
            "other": torch.ones(B, 3),
            layer.group: TensorDict({layer.name: layer.init_state(B)}, batch_size=[B]),
        },
        batch_size=[B],
    )


def test_layer_reads_and_writes_its_sub_state_without_mutation():
    torch.manual_seed(0)
    layer = AxonLayer(5, 7, AxonCellConfig(chunk_size=4), name="q", group="xl_qkv")
    parent = _parent(layer)
    before = parent.clone()
    x = torch.randn(2, 9, 5)
    y, sub = layer(x, parent)
    assert y.shape == (2, 9, 7)
    new = layer.update_parent_state(sub, parent)
    assert (parent == before).all()
    assert torch.equal(new["xl_qkv", "q", "h"], sub["h"]) and torch.equal(new["other"], parent["other"])
    y_direct, s_direct = layer.cell(x, layer.init_state(2))
    torch.testing.assert_close(y, y_direct)
    # continuing from the written-back parent equals one longer call
    x2 = torch.randn(2, 4, 5)
    y2, _ = layer(x2, new)
    y_all, _ = layer.cell(torch.cat([x, x2], 1), None)
    torch.testing.assert_close(torch.cat([y, y2], 1), y_all, atol=1e-5, rtol=1e-5)


def test_missing_entry_or_parent_gives_fresh_state_and_step_mode():
    layer = AxonLayer(3, 2, name="g", group="mlstm")
    x = torch.randn(4, 3)
    y_none, s = layer(x, None)
    y_empty, _ = layer(x, TensorDict({}, batch_size=[4]))
    torch.testing.assert_close(y_none, y_empty)
    assert y_none.shape == (4, 2)
    new = layer.update_parent_state(s, TensorDict({}, batch_size=[4]))
    assert set(new.keys(True, True)) == {("mlstm", "g", k) for k in s.keys()}


def test_layer_trace_gradient_through_detached_parent():
    torch.manual_seed(1)
    layer = AxonLayer(3, 2, AxonCellConfig(chunk_size=3), name="k", group="g").double()
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    target = torch.randn(2, 10, 2, dtype=torch.float64)
    loss = ((layer(x)[0] - target) ** 2).sum()
    full = torch.autograd.grad(loss, list(layer.parameters()))
    layer.zero_grad()
    parent = TensorDict({}, batch_size=[2])
    for a, b in ((0, 4), (4, 10)):
        y, sub = layer(x[:, a:b], parent)
        ((y - target[:, a:b]) ** 2).sum().backward()
        parent = layer.update_parent_state(sub, parent).detach()
    for p, g in zip(layer.parameters(), full, strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-10, rtol=1e-9)


def test_layer_errors():
    layer = AxonLayer(3, 2)
    with pytest.raises(ValueError, match=r"expected x \[B, T, 3\]"):
        layer(torch.randn(2, 5, 4))
    with pytest.raises(TypeError, match="AxonCellConfig"):
        AxonLayer(3, 2, cfg="nope")
