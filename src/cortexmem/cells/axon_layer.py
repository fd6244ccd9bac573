"""AxonLayer: a stateful drop-in for ``nn.Linear`` backed by an :class:`AxonCell`.

Its state lives inside a host module's state TensorDict at ``parent[group][name]``, so a host cell (XL,
mLSTM, sLSTM, ...) carries the traces of all its axon layers under one group (e.g. ``xl_qkv/q``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from .axon import AxonCell, AxonCellConfig

_UNSET: Any = object()


class AxonLayer(nn.Module):
    """``x [B, T, in_features]`` (or ``[B, in_features]``) -> ``y [B, T, out_features]`` via one RTU."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        cfg: AxonCellConfig | None = None,
        *,
        name: str = "axon",
        group: str = "axon",
    ) -> None:
        super().__init__()
        if cfg is not None and not isinstance(cfg, AxonCellConfig):
            raise TypeError(f"AxonLayer: cfg must be an AxonCellConfig or None, got {type(cfg).__name__}")
        cfg = cfg or AxonCellConfig()
        # as a Linear replacement, the unit has out_features complex channels unless told otherwise
        update = {"hidden_size": in_features, "out_dim": out_features, "rtu_size": cfg.rtu_size or out_features}
        cfg = cfg.model_copy(update=update)
        self.in_features, self.out_features = in_features, out_features
        self.name, self.group = name, group
        self.cell = AxonCell(cfg)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, state at {self.group}/{self.name}"

    @property
    def weight(self) -> Tensor:
        """The output projection's weight ``[out_features, 2 * rtu_size]``."""
        return self.cell.out.weight

    @property
    def bias(self) -> Tensor:
        """The output bias ``[out_features]`` (an AxonLayer always has one), for gate-bias initialisation."""
        return self.cell.out.bias

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        """This layer's own fresh sub-state."""
        return self.cell.init_state(batch, device=device, dtype=dtype)

    def read_state(self, parent: TensorDict | None, batch: int, device: Any, dtype: torch.dtype) -> TensorDict:
        """``parent[group][name]``, or a fresh sub-state when the parent (or the entry) is missing."""
        if parent is not None:
            sub = parent.get((self.group, self.name), None)
            if sub is not None:
                return sub
        return self.init_state(batch, device=device, dtype=dtype)

    def forward(
        self, x: Tensor, parent: TensorDict | None = None, resets: Tensor | None = None, *, state: Any = _UNSET
    ) -> tuple[Tensor, TensorDict] | Tensor:
        """Returns ``(y, next_sub_state)``; write the latter back with :meth:`update_parent_state`.

        The peer library's keyword form ``y = layer(x, state=parent, resets=r)`` returns ``y`` only and stores the
        new sub-state in ``parent[group][name]`` in place (with ``state=None``: in the layer itself).
        """
        if state is not _UNSET:
            return self._forward_in_place(x, state, resets)
        is_step = x.dim() == 2
        if is_step:
            x = x[:, None]
            resets = None if resets is None else resets.reshape(-1, 1)
        if x.dim() != 3 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"AxonLayer {self.group}/{self.name}: expected x [B, T, {self.in_features}] or "
                f"[B, {self.in_features}], got {tuple(x.shape)}"
            )
        dtype = x.dtype if parent is None else _float_dtype(parent, x.dtype)
        sub = self.read_state(parent, x.shape[0], x.device, dtype)
        y, nxt = self.cell.forward_sequence(x, sub, resets)
        return (y[:, 0] if is_step else y), nxt

    def _forward_in_place(self, x: Tensor, parent: TensorDict | None, resets: Tensor | None) -> Tensor:
        if parent is None:
            y, self._local_state = self.forward(x, self._local_state, resets)
            return y
        y, nxt = self.forward(x, parent, resets)
        if parent.get(self.group, None) is None:
            parent.set(self.group, TensorDict({}, batch_size=parent.batch_size, device=parent.device))
        parent.set((self.group, self.name), nxt)
        return y

    @property
    def _local_state(self) -> TensorDict | None:
        """The layer's own state for ``state=None`` calls, kept as ``{group: {name: sub}}``."""
        return self.__dict__.get("_local_parent")

    @_local_state.setter
    def _local_state(self, sub: TensorDict) -> None:
        inner = TensorDict({self.name: sub}, batch_size=sub.batch_size)
        self.__dict__["_local_parent"] = TensorDict({self.group: inner}, batch_size=sub.batch_size)

    def update_parent_state(self, next_state: TensorDict, parent: TensorDict) -> TensorDict:
        """A new parent with ``[group][name] = next_state``; neither ``parent`` nor its groups are mutated."""
        new = parent.clone(recurse=False)
        grp = new.get(self.group, None)
        grp = TensorDict({}, batch_size=parent.batch_size, device=parent.device) if grp is None else grp
        grp = grp.clone(recurse=False)
        grp.set(self.name, next_state)
        new.set(self.group, grp)
        return new


def group_state(
    layers: Iterable[AxonLayer], batch: int, *, device: Any = None, dtype: torch.dtype | None = None
) -> TensorDict:
    """Fresh ``{name: sub_state}`` of layers sharing one group (for a host's ``init_state``)."""
    return TensorDict(
        {layer.name: layer.init_state(batch, device=device, dtype=dtype) for layer in layers},
        batch_size=[batch],
        device=device,
    )


def _float_dtype(td: TensorDict, default: torch.dtype) -> torch.dtype:
    for v in td.values(include_nested=True, leaves_only=True):
        if v.is_floating_point():
            return v.dtype
    return default


def linear_or_axon(
    in_features: int,
    out_features: int,
    *,
    use_axon: bool,
    cfg: AxonCellConfig | None,
    name: str,
    group: str,
    bias: bool = True,
) -> nn.Module:
    """An ``nn.Linear``, or an :class:`AxonLayer` with its state at ``[group][name]`` when ``use_axon``."""
    if use_axon:
        return AxonLayer(in_features, out_features, cfg, name=name, group=group)
    return nn.Linear(in_features, out_features, bias=bias)


def axon_groups(
    module: nn.Module, batch: int, *, device: Any = None, dtype: torch.dtype | None = None
) -> dict[str, TensorDict]:
    """``{group: fresh group state}`` for the AxonLayers among ``module``'s direct children."""
    by_group: dict[str, list[AxonLayer]] = {}
    for child in module.children():
        if isinstance(child, AxonLayer):
            by_group.setdefault(child.group, []).append(child)
    return {g: group_state(layers, batch, device=device, dtype=dtype) for g, layers in by_group.items()}


class LayerCalls:
    """Runs a host's projections (``nn.Linear`` or :class:`AxonLayer`) in one call and gathers the new
    axon sub-states, grouped, for the host's next state."""

    def __init__(self, state: TensorDict, resets: Tensor | None) -> None:
        self.state, self.resets = state, resets
        self.groups: dict[str, dict[str, TensorDict]] = {}

    def __call__(self, layer: nn.Module, x: Tensor) -> Tensor:
        if not isinstance(layer, AxonLayer):
            return layer(x)
        y, sub = layer(x, self.state, self.resets)
        self.groups.setdefault(layer.group, {})[layer.name] = sub
        return y

    def new_groups(self) -> dict[str, TensorDict]:
        """``{group: TensorDict of the new sub-states}`` to merge into the host's next state."""
        st = self.state
        return {g: TensorDict(subs, batch_size=st.batch_size, device=st.device) for g, subs in self.groups.items()}
