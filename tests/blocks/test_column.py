"""ColumnBlock: the formula, top-k, router gradients at init, routing weights, state layout and errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cortexmem import (
    CausalConv1dCellConfig,
    ColumnBlockConfig,
    LSTMCellConfig,
    PassThroughBlockConfig,
    PostUpBlockConfig,
    PreUpBlockConfig,
    RouterConfig,
    build_block,
    build_cortex_auto_stack,
    collect_routing_weights,
)

D = 12


def _experts():
    return [
        PassThroughBlockConfig(cell=LSTMCellConfig()),
        PassThroughBlockConfig(cell=CausalConv1dCellConfig(kernel_size=3)),
        PreUpBlockConfig(cell=LSTMCellConfig(), proj_factor=1.5),
    ]


def _column(router=None, experts=None, **kw):
    torch.manual_seed(0)
    cfg = ColumnBlockConfig(experts=experts or _experts(), router=router or RouterConfig(d_key=8),
                            mixer_d_key=6, **kw)
    return build_block(cfg, D)


def _identity_experts():
    # PassThrough blocks whose conv cell outputs zero: each expert returns its input exactly.
    return [PassThroughBlockConfig(cell=CausalConv1dCellConfig(kernel_size=k, bias=False)) for k in (2, 3)]


@pytest.mark.parametrize("top_k", [None, 1])
def test_identity_experts_give_rmsnorm_then_identity_at_init(top_k):
    col = _column(RouterConfig(d_key=8, top_k=top_k), _identity_experts())
    for e in col.experts:
        nn.init.zeros_(e.cell.weight)
    x = torch.randn(2, 9, D) * 3
    y, _ = col(x)
    torch.testing.assert_close(y, nn.functional.rms_norm(x, (D,), eps=col.norm.eps))
    unit = x / x.pow(2).mean(-1, keepdim=True).sqrt()  # already RMS-normalised: the column is the identity
    torch.testing.assert_close(col(unit)[0], unit, rtol=0, atol=1e-5)


def _reference(col: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The issue's formula written out from the column's parameters."""
    cfg = col.config.router
    u = nn.functional.rms_norm(x, (D,), col.norm.weight, col.norm.eps)
    delta = torch.stack([e(u)[0] - u for e in col.experts], dim=2)  # [B, T, E, H]
    m = col.mixer
    att = torch.einsum("btek,btfk->btef", delta @ m.q.weight.T, delta @ m.k.weight.T)
    att = att / math.sqrt(m.q.out_features)
    mixed = delta + torch.einsum("btef,btfd->bted", att.softmax(-1), delta @ m.v.weight.T) @ m.o.weight.T
    r = col.router
    p_hat = torch.einsum("btk,btek->bte", u @ r.query.weight.T, mixed @ r.key.weight.T) / math.sqrt(cfg.d_key)
    logits = (torch.log_softmax(r.global_logits, -1) + r.refinement_scale * p_hat) / cfg.temperature
    if cfg.top_k is not None:
        kth = logits.topk(cfg.top_k, -1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    alpha = logits.softmax(-1)
    res = (alpha.unsqueeze(-1) * mixed).sum(2) + (u - x)
    rho = col.rho(nn.functional.rms_norm(res, (D,), col.rho_norm.weight, col.rho_norm.eps))
    return x + res + col.alpha_col * rho


@pytest.mark.parametrize("top_k,temperature", [(None, 1.0), (2, 0.5), (1, 2.0)])
def test_forward_matches_the_formula(top_k, temperature):
    col = _column(RouterConfig(d_key=8, top_k=top_k, temperature=temperature))
    with torch.no_grad():  # move every zero-initialised part away from zero so each term matters
        col.alpha_col.fill_(0.7)
        col.mixer.o.weight.normal_(0, 0.3)
        col.router.global_logits.copy_(torch.tensor([0.3, -0.2, 0.1]))
        col.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 11, D)
    torch.testing.assert_close(col(x)[0], _reference(col, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2])
def test_top_k_zeroes_the_rest(k):
    col = _column(RouterConfig(d_key=8, top_k=k))
    x = torch.randn(2, 13, D)
    u = col.norm(x)
    delta, _ = col.expert_deltas(u, col.init_state(2), None)
    mixed = delta + col.mixer(delta)
    alpha = col.router(u, mixed)
    assert (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(-1), torch.ones(2, 13))
    assert ((alpha > 0).sum(-1) == k).all()
    # the kept experts are the k largest logits
    kept = alpha > 0
    logits = col.router.logits(u, mixed)
    lowest_kept = logits.masked_fill(~kept, math.inf).amin(-1)
    assert (lowest_kept >= logits.masked_fill(kept, -math.inf).amax(-1)).all()
    y, _ = col(x)
    torch.testing.assert_close(col.routing_weights, alpha.mean((0, 1)))
    if k == 1:
        chosen = mixed.gather(2, alpha.argmax(-1)[..., None, None].expand(-1, -1, 1, D)).squeeze(2)
        torch.testing.assert_close(y, u + chosen)  # alpha_col = 0 at init


@pytest.mark.parametrize("top_k", [None, 1, 2])
@pytest.mark.parametrize("refine", [True, False])
def test_router_parameters_get_gradient_at_init(top_k, refine):
    col = _column(RouterConfig(d_key=8, top_k=top_k, use_token_refinement=refine))
    x = torch.randn(2, 9, D)
    y, _ = col(x)
    (y * torch.randn_like(y)).sum().backward()
    names = ["global_logits"] + (["query.weight", "key.weight", "refinement_scale"] if refine else [])
    for name in names:
        g = col.router.get_parameter(name).grad
        assert g is not None and g.abs().sum() > 0, f"router.{name} gets no gradient (top_k={top_k})"
    assert col.alpha_col.grad.abs() > 0
    assert col.mixer.o.weight.grad.abs().sum() > 0


def test_top1_without_straight_through_cannot_learn():
    # Why straight_through is the default: renormalised top-1 weights are constant 1, so the exact gradient
    # of the router is zero.
    col = _column(RouterConfig(d_key=8, top_k=1, straight_through=False))
    y, _ = col(torch.randn(2, 9, D))
    (y * torch.randn_like(y)).sum().backward()
    assert col.router.global_logits.grad.abs().sum() == 0
    assert col.router.query.weight.grad.abs().sum() == 0


def test_straight_through_keeps_forward_values_exact():
    x = torch.randn(2, 9, D)
    ys = [_column(RouterConfig(d_key=8, top_k=1, straight_through=st))(x)[0] for st in (True, False)]
    assert torch.equal(ys[0], ys[1])


def test_mixer_query_key_learn_after_one_step():
    col = _column()
    opt = torch.optim.SGD(col.parameters(), lr=0.1)
    x, w = torch.randn(2, 9, D), torch.randn(2, 9, D)
    for _ in range(2):
        opt.zero_grad()
        (col(x)[0] * w).sum().backward()
        opt.step()
    assert col.mixer.q.weight.grad.abs().sum() > 0 and col.mixer.k.weight.grad.abs().sum() > 0


def test_routing_weights_and_state_layout():
    col = _column()
    assert col.routing_weights is None
    st = col.init_state(4)
    assert sorted(st.keys()) == [
        "expert_PassThroughBlock_0", "expert_PassThroughBlock_1", "expert_PreUpBlock_2"]
    assert "LSTMCell" in st["expert_PreUpBlock_2"].keys()
    col(torch.randn(4, 5, D), st)
    w = col.routing_weights
    assert w.shape == (3,) and not w.requires_grad
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))


def test_every_expert_advances_its_state_under_top_k():
    col = _column(RouterConfig(top_k=1, use_token_refinement=False), _experts()[:2])
    with torch.no_grad():
        col.router.global_logits.copy_(torch.tensor([5.0, -5.0]))  # expert 1 never selected
    x = torch.randn(2, 6, D)
    _, st = col(x)
    assert col.routing_weights[1] == 0
    assert st["expert_PassThroughBlock_1", "CausalConv1dCell", "conv"].abs().sum() > 0
    y_split, st2 = col(x[:, 3:], col(x[:, :3])[1])
    torch.testing.assert_close(col(x)[0][:, 3:], y_split)


def test_single_expert_column_has_no_mixer_and_weight_one():
    col = _column(experts=[PostUpBlockConfig(cell=LSTMCellConfig())])
    assert col.mixer is None
    col(torch.randn(1, 4, D))
    torch.testing.assert_close(col.routing_weights, torch.ones(1))


def test_column_config_errors():
    with pytest.raises(ValueError, match=r"top_k must be <= number of experts \(3\), got 4"):
        ColumnBlockConfig(experts=_experts(), router=RouterConfig(top_k=4))
    with pytest.raises(ValueError, match="at least 1"):
        ColumnBlockConfig(experts=[])
    with pytest.raises(ValueError, match="greater than 0"):
        RouterConfig(temperature=0)
    with pytest.raises(ValueError, match="needs LSTMCellConfig.hidden_size=18, got 12"):
        build_block(ColumnBlockConfig(experts=[PreUpBlockConfig(cell=LSTMCellConfig(hidden_size=12),
                                                                proj_factor=1.5)]), D)


def test_column_does_not_mutate_its_config():
    cfg = ColumnBlockConfig(experts=_experts())
    col = build_block(cfg, D)
    assert cfg.experts[0].cell.hidden_size is None
    assert col.config.experts[2].cell.hidden_size == 18


def test_collect_routing_weights_over_a_stack():
    stack = build_cortex_auto_stack(D, 3, ["LC", "L", "C L C"])
    assert collect_routing_weights(stack) == {}
    stack(torch.randn(2, 4, D))
    got = collect_routing_weights(stack)
    assert list(got) == ["blocks.0", "blocks.2"] and [w.shape for w in got.values()] == [(2,), (3,)]
