"""The behavioural contract every MemoryModule must honour. Each check takes a factory ``() -> module``."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

B, T, SPLITS = 3, 21, (0, 1, 6, 7, 15, 21)
ATOL = 1e-5


def _x(module, batch=B, steps=T, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, steps, module.input_size, generator=g).to(dtype)


def _garbage_state(module, batch=B, seed=1):
    g = torch.Generator().manual_seed(seed)
    st = module.init_state(batch, dtype=torch.float32)
    def garbage(v):
        if v.is_floating_point():
            return torch.randn(v.shape, generator=g).to(v.dtype)
        if v.dtype == torch.bool:
            return torch.rand(v.shape, generator=g) < 0.5
        return v + 3

    return st.apply(garbage)


def _close(a, b, atol=ATOL, what=""):
    err = (a - b).abs().max().item()
    assert err <= atol, f"{what}: max abs err {err:.3e} > {atol:.0e}"


def _states_close(s1: TensorDict, s2: TensorDict, atol=ATOL, what="state"):
    assert set(s1.keys(True, True)) == set(s2.keys(True, True)), what
    for k in s1.keys(True, True):
        a, b = s1[k], s2[k]
        if a.is_floating_point():
            _close(a.double(), b.double(), atol, f"{what} {k}")
        else:
            assert torch.equal(a, b), f"{what} {k}"


def assert_steps_match_sequence(m, x, resets=None, atol=ATOL):
    """One sequence call of ``m`` on ``x`` equals a loop of ``m.step``: the outputs and every final-state entry."""
    y, s = m(x, None, resets=resets)
    st, ys = None, []
    for t in range(x.shape[1]):
        yt, st = m.step(x[:, t], st, resets=None if resets is None else resets[:, t])
        ys.append(yt)
    _close(y, torch.stack(ys, 1), atol, "sequence vs steps")
    _states_close(s, st, atol, "final state sequence vs steps")


def check_sequence_equals_steps(m):
    x = _x(m)
    r = torch.zeros(B, T, dtype=torch.bool)
    r[0, 9] = r[2, 3] = True
    for resets in (None, r):
        assert_steps_match_sequence(m, x, resets)


def check_split_calls(m):
    x = _x(m)
    r = torch.zeros(B, T, dtype=torch.bool)
    r[1, 6] = r[0, 10] = r[2, 20] = True
    for resets in (None, r):
        y, s = m(x, None, resets=resets)
        st, ys = None, []
        for a, b in zip(SPLITS[:-1], SPLITS[1:], strict=True):
            yp, st = m(x[:, a:b], st, resets=None if resets is None else resets[:, a:b])
            ys.append(yp)
        _close(y, torch.cat(ys, 1), what="split calls vs one call")
        _states_close(s, st, what="final state split vs one call")


def check_reset_equals_fresh(m):
    x = _x(m)
    for t0 in (5, 13):
        r = torch.zeros(B, T, dtype=torch.bool)
        r[0, t0] = True
        y, _ = m(x, _garbage_state(m), resets=r)
        y_clean, _ = m(x, _garbage_state(m))
        y_fresh, _ = m(x[:1, t0:], None)
        _close(y[0, t0:], y_fresh[0], what=f"reset at t={t0} vs fresh start")
        _close(y[0, :t0], y_clean[0, :t0], what="before the reset")
        _close(y[1:], y_clean[1:], what="other rows untouched by a reset")


def check_fresh_state(m):
    x = _x(m)
    y_none, s_none = m(x, None)
    r = torch.zeros(B, T, dtype=torch.bool)
    r[:, 0] = True
    y_reset, s_reset = m(x, _garbage_state(m), resets=r)
    _close(y_none, y_reset, what="garbage state + reset at t=0 vs fresh state")
    _states_close(s_none, s_reset)
    # a [B] mask in sequence mode means "reset before the first step", never every step
    y_b, _ = m(x, _garbage_state(m), resets=torch.ones(B, dtype=torch.bool))
    _close(y_b, y_none, what="[B] resets in sequence mode")
    # init_state / reset_state agree, and reset_state leaves other rows and the input untouched
    g = _garbage_state(m)
    before = g.clone()
    mask = torch.tensor([True, False, True])
    rs = m.reset_state(g, mask)
    _states_close(g, before, what="reset_state must not mutate its input")
    init = m.init_state(B, dtype=torch.float32)
    _states_close(rs[0:1], init[0:1], what="reset row")
    _states_close(rs[1:2], g[1:2], what="untouched row")


def check_causal(m):
    x = _x(m)
    y, _ = m(x, None)
    x2 = x.clone()
    x2[:, 12:] += torch.randn_like(x2[:, 12:])
    y2, _ = m(x2, None)
    _close(y[:, :12], y2[:, :12], what="outputs must not depend on future inputs")


def check_step_resets(m):
    x = _x(m, steps=4)
    st = None
    for t in range(3):
        _, st = m.step(x[:, t], st)
    mask = torch.tensor([False, True, False])
    y1, s1 = m.step(x[:, 3], st, resets=mask)
    y2, s2 = m.step(x[:, 3], m.reset_state(st, mask))
    _close(y1, y2, what="[B] resets in step mode")
    _states_close(s1, s2)


def check_no_state_mutation(m):
    x = _x(m)
    st = _garbage_state(m)
    before = st.clone()
    m(x, st, resets=torch.ones(B, T, dtype=torch.bool))
    _states_close(st, before, atol=0.0, what="forward must not mutate the caller's state")


def check_gradients(m):
    x = _x(m).requires_grad_(True)
    st = _garbage_state(m).apply(lambda v: v.clone().requires_grad_(True) if v.is_floating_point() else v)
    leaves = [v for v in st.values(True, True) if v.is_floating_point()]
    y, s = m(x, st)
    g = torch.Generator().manual_seed(3)
    loss = (y * torch.randn(y.shape, generator=g)).sum()
    for v in s.values(True, True):
        if v.is_floating_point():
            loss = loss + (v * torch.randn(v.shape, generator=g)).sum()
    params = [p for p in m.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x, *params, *leaves], allow_unused=True)
    names = ["x"] + [n for n, p in m.named_parameters() if p.requires_grad] + ["state"] * len(leaves)
    missing = [n for n, gr in zip(names, grads, strict=True) if gr is None]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(gr).all() for gr in grads)
    if leaves:
        assert any(gr.abs().sum() > 0 for gr in grads[1 + len(params):]), "no gradient reaches the initial state"
    assert sum(gr.abs().sum() for gr in grads[1 : 1 + len(params)]) > 0


def check_bf16(m):
    mb = m.to(torch.bfloat16)
    x = _x(mb, dtype=torch.bfloat16)
    y, s = mb(x, None)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    y2, _ = mb.step(x[:, 0], s)
    assert y2.dtype == torch.bfloat16 and torch.isfinite(y2.float()).all()


def check_state_shape(m):
    st = m.init_state(5)
    assert isinstance(st, TensorDict) and tuple(st.batch_size) == (5,)
    y, s = m(_x(m, batch=5), None)
    assert tuple(s.batch_size) == (5,) and y.shape[:2] == (5, T)
    assert set(s.keys(True, True)) == set(st.keys(True, True))
    ys, _ = m.step(_x(m, batch=5)[:, 0], s)
    assert ys.shape == (5, y.shape[-1])


def check_errors(m):
    H = m.input_size
    with pytest.raises(ValueError, match="feature size"):
        m(torch.randn(B, T, H + 1))
    with pytest.raises(ValueError, match="B, T"):
        m(torch.randn(B, T, 2, H))
    with pytest.raises(ValueError, match="batch size"):
        m(torch.randn(B, T, H), m.init_state(B + 1))
    bad = m.init_state(B)
    bad["__unexpected__"] = torch.zeros(B)
    with pytest.raises(ValueError, match="structure"):
        m(torch.randn(B, T, H), bad)
    with pytest.raises(ValueError, match="shape"):
        m(torch.randn(B, T, H), resets=torch.zeros(B, T + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="step mode"):
        m(torch.randn(B, H), resets=torch.zeros(B, 2, dtype=torch.bool))
    with pytest.raises(TypeError):
        m(torch.zeros(B, T, H, dtype=torch.long))


CHECKS = [
    check_sequence_equals_steps, check_split_calls, check_reset_equals_fresh, check_fresh_state, check_causal,
    check_step_resets, check_no_state_mutation, check_gradients, check_bf16, check_state_shape, check_errors,
]
