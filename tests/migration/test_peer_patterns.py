"""The peer library's published patterns run here as written, but for the import line (docs/migration.md).

1. a custom cell that overrides only ``forward(x, state, *, resets)`` (and one that defines only
   ``forward_sequence``): both pass the behavioural harness;
2. ``override_global_configs=[PostUpGatedBlockConfig(proj_factor=2.0)]``: an override needs only what it sets;
3. ``AxonLayer(..., cfg=AxonConfig(...))`` inside a user's cell, called with ``state=`` and updating it in place.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from cortexmem import (  # the peer: from cortex import ...
    AxonConfig,
    AxonLayer,
    CellConfig,
    MemoryCell,
    PostUpGatedBlockConfig,
    build_cortex_auto_stack,
    register_cell,
)
from cortexmem.blocks import PassThroughBlockConfig
from cortexmem.blocks.base import build_block
from cortexmem.cells.base import build_cell
from tests.harness.contract import CHECKS

H = 16


# ---- pattern 1: the peer README's "Custom Cell", filled in -------------------------------------------------
class PeerDecayCellConfig(CellConfig):
    decay: float = 0.9


@register_cell(PeerDecayCellConfig)
class PeerDecayCell(MemoryCell):
    def __init__(self, cfg):
        super().__init__(hidden_size=cfg.hidden_size)
        self.cfg = cfg
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def init_state(self, batch, *, device=None, dtype=None):
        return TensorDict({"hidden": torch.zeros(batch, self.hidden_size, device=device, dtype=dtype)},
                          batch_size=[batch])

    def forward(self, x, state, *, resets=None):
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        h = state["hidden"]
        if resets is not None:
            h = torch.where(resets.view(-1, 1), torch.zeros_like(h), h)
        h = self.cfg.decay * h + torch.tanh(self.proj(x)).to(h.dtype)
        return h.to(x.dtype), TensorDict({"hidden": h}, batch_size=state.batch_size)

    def reset_state(self, state, mask):
        return TensorDict({"hidden": torch.where(mask.view(-1, 1), torch.zeros_like(state["hidden"]),
                                                 state["hidden"])}, batch_size=state.batch_size)


# the same cell written the native way: only forward_sequence
class SeqDecayCellConfig(CellConfig):
    decay: float = 0.9


@register_cell(SeqDecayCellConfig)
class SeqDecayCell(MemoryCell):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def init_state(self, batch, *, device=None, dtype=None):
        return TensorDict({"hidden": torch.zeros(batch, self.hidden_size, device=device, dtype=dtype)},
                          batch_size=[batch])

    def forward_sequence(self, x, state, resets):
        h, ys = state["hidden"], []
        for t in range(x.shape[1]):
            if resets is not None:
                h = torch.where(resets[:, t, None], torch.zeros_like(h), h)
            h = self.config.decay * h + torch.tanh(self.proj(x[:, t])).to(h.dtype)
            ys.append(h.to(x.dtype))
        return torch.stack(ys, 1), TensorDict({"hidden": h}, batch_size=state.batch_size)  # (B, T, H)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("cfg_cls", [PeerDecayCellConfig, SeqDecayCellConfig], ids=["forward-only", "sequence-only"])
def test_cell_written_either_way_passes_the_harness(cfg_cls, check):
    torch.manual_seed(0)
    check(build_cell(cfg_cls(hidden_size=H)).eval())


def test_both_ways_compute_the_same_thing():
    torch.manual_seed(0)
    a = build_cell(PeerDecayCellConfig(hidden_size=H))
    b = build_cell(SeqDecayCellConfig(hidden_size=H))
    b.load_state_dict(a.state_dict())
    x, r = torch.randn(3, 7, H), torch.zeros(3, 7, dtype=torch.bool)
    r[1, 4] = True
    torch.testing.assert_close(a(x, resets=r)[0], b(x, resets=r)[0])


def test_forward_only_cell_in_a_block():
    block = build_block(PassThroughBlockConfig(cell=PeerDecayCellConfig()), H)
    y, state = block(torch.randn(2, 5, H))
    assert y.shape == (2, 5, H) and state["PeerDecayCell", "hidden"].shape == (2, H)


def test_a_cell_with_neither_forward_is_a_clear_error():
    class EmptyCellConfig(CellConfig):
        pass

    class EmptyCell(MemoryCell):
        def init_state(self, batch, *, device=None, dtype=None):
            return TensorDict({}, batch_size=[batch])

    with pytest.raises(TypeError, match="must define forward_sequence"):
        EmptyCell(EmptyCellConfig(hidden_size=H))


# ---- pattern 2: a global override that sets only what it overrides -----------------------------------------
def test_override_global_configs_needs_only_the_overridden_fields():
    stack = build_cortex_auto_stack(d_hidden=H, num_layers=2, pattern="X",
                                    override_global_configs=[PostUpGatedBlockConfig(proj_factor=2.0)])
    assert [b.proj_factor for b in stack.config.blocks] == [2.0, 2.0]
    y, _ = stack(torch.randn(2, 3, H))
    assert y.shape == (2, 3, H)


def test_a_block_without_cell_cannot_be_built():
    with pytest.raises(ValueError, match="PostUpGatedBlockConfig has no cell"):
        build_block(PostUpGatedBlockConfig(proj_factor=2.0), H)


# ---- pattern 3: AxonLayer inside a user's cell, peer call form ---------------------------------------------
class AxonMixCellConfig(CellConfig):
    pass


@register_cell(AxonMixCellConfig)
class AxonMixCell(MemoryCell):
    def __init__(self, cfg):
        super().__init__(hidden_size=cfg.hidden_size)
        self.mix = AxonLayer(cfg.hidden_size, cfg.hidden_size, cfg=AxonConfig(activation="SiLU"), name="mix",
                             group="axon")

    def init_state(self, batch, *, device=None, dtype=None):
        sub = self.mix.init_state(batch, device=device, dtype=dtype)
        return TensorDict({"axon": TensorDict({"mix": sub}, batch_size=[batch])}, batch_size=[batch])

    def forward(self, x, state, *, resets=None):
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        y = self.mix(x, state=state, resets=resets)  # writes state["axon"]["mix"] in place
        return y, state

    def reset_state(self, state, mask):
        fresh = self.init_state(mask.shape[0], device=mask.device, dtype=state["axon", "mix"].dtype
                                if not isinstance(state["axon", "mix"], TensorDict) else None)
        return TensorDict({"axon": TensorDict({"mix": state["axon", "mix"].apply(
            lambda a, b: torch.where(mask.view(-1, *[1] * (a.dim() - 1)), b, a), fresh["axon", "mix"])},
            batch_size=state.batch_size)}, batch_size=state.batch_size)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_axon_layer_in_a_user_cell_passes_the_harness(check):
    torch.manual_seed(0)
    check(build_cell(AxonMixCellConfig(hidden_size=H)).eval())


def test_axon_layer_peer_keyword_form_updates_state_in_place():
    layer = AxonLayer(H, 24, cfg=AxonConfig(activation="Tanh"), name="q", group="g")
    parent = TensorDict({}, batch_size=[2])
    y = layer(torch.randn(2, 5, H), state=parent, resets=torch.zeros(2, 5, dtype=torch.bool))
    assert y.shape == (2, 5, 24) and ("g", "q") in parent.keys(True)
    y_local = layer(torch.randn(2, 5, H), state=None)
    y_again = layer(torch.randn(2, 5, H), state=None)  # the layer keeps its own state between calls
    assert y_local.shape == y_again.shape == (2, 5, 24)
