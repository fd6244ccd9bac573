"""GraphedModule: a sequence forward *and* its backward captured as CUDA graphs, for launch-bound training.

At small widths a recurrent stack launches thousands of small kernels per forward+backward; CPU dispatch then
sets the pace, not the GPU. ``g = GraphedModule(stack, batch=32, seq=256)`` captures ``stack(x, state,
resets=...)`` for those fixed shapes with ``torch.cuda.make_graphed_callables``: ``y, new_state = g(x, state)``
replays the forward graph and ``loss.backward()`` replays the backward graph, accumulating into the stack's
``.grad`` like eager autograd (any loss, optimizer or grad scaler works after it).

Contract (checked where it can be): shapes, dtype, device and train/eval mode are fixed at capture; the incoming
state is a constant (truncated BPTT: pass a detached state; a state that requires grad is refused); ``y`` lives
in a static buffer that the next call overwrites, so finish its backward first (``new_state`` is a copy and
survives). A module whose forward synchronises with the host (``.item()``, ``nonzero``; e.g. the LSTM's cuDNN
segments when ``resets`` are captured) cannot be captured, which is reported with the cause. On CPU, or with
``use_graph=False``, the same object runs the module eagerly.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.module import MemoryModule


class _Flat(nn.Module):
    """``(x, [resets], *state leaves) -> (y, *new state leaves)``: the tensors-only call graphs need."""

    def __init__(self, module: MemoryModule, keys: list, batch: int, with_resets: bool) -> None:
        super().__init__()
        self.module, self.keys, self.batch, self.with_resets = module, keys, batch, with_resets

    def forward(self, x: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        resets, leaves = (rest[0], rest[1:]) if self.with_resets else (None, rest)
        state = TensorDict({}, batch_size=[self.batch], device=x.device)
        for k, v in zip(self.keys, leaves, strict=True):
            state.set(k, v)
        y, new = self.module(x, state, resets=resets)
        return (y, *(new.get(k) for k in self.keys))


class GraphedModule(nn.Module):
    """Captured ``module(x [B, T, H], state, resets=...)`` for one ``(batch, seq)``; eager on CPU."""

    def __init__(self, module: MemoryModule, batch: int, seq: int, *, device: Any = "cuda",
                 dtype: torch.dtype = torch.float32, resets: bool = False, x_requires_grad: bool = True,
                 use_graph: bool | None = None, warmup: int = 3) -> None:
        super().__init__()
        if not isinstance(module, MemoryModule):
            raise TypeError(f"GraphedModule expects a cortexmem MemoryModule, got {type(module).__name__}")
        if batch < 1 or seq < 1:
            raise ValueError(f"batch and seq must be >= 1, got batch={batch}, seq={seq}")
        self.module = module
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.use_graph = self.device.type == "cuda" if use_graph is None else use_graph
        if self.use_graph and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {self.device}")
        self.shape = (batch, seq, module.input_size)
        self.dtype, self.with_resets, self.training_mode = dtype, resets, module.training
        self._init = module.init_state(batch, device=self.device, dtype=dtype)
        self.keys = list(self._init.keys(include_nested=True, leaves_only=True))
        self.flat = _Flat(module, self.keys, batch, resets)
        self.graphed = self.flat
        if self.use_graph:
            x = torch.zeros(self.shape, device=self.device, dtype=dtype, requires_grad=x_requires_grad)
            extra = [torch.zeros(batch, seq, dtype=torch.bool, device=self.device)] if resets else []
            sample = (x, *extra, *(self._init.get(k).clone() for k in self.keys))
            try:
                self.graphed = torch.cuda.make_graphed_callables(self.flat, sample, num_warmup_iters=warmup)
            except RuntimeError as e:
                raise RuntimeError(
                    f"GraphedModule: {type(module).__name__} cannot be captured in a CUDA graph ({e}); a host "
                    "synchronisation in its forward or backward is the usual cause. Use use_graph=False"
                    + (" or resets=False" if resets else "")
                ) from e

    def forward(self, x: Tensor, state: TensorDict | None = None, *,
                resets: Tensor | None = None) -> tuple[Tensor, TensorDict]:
        """``x [B, T, H]`` (the captured shape) -> ``(y, new_state)``; ``y`` is overwritten by the next call."""
        if tuple(x.shape) != self.shape:
            raise ValueError(f"GraphedModule was captured for x of shape {self.shape}, got {tuple(x.shape)}")
        if x.device != self.device or x.dtype != self.dtype:
            raise ValueError(f"GraphedModule expects x on {self.device} as {self.dtype}, got {x.device} {x.dtype}")
        if self.module.training != self.training_mode:
            raise ValueError("GraphedModule: the module's train/eval mode changed since capture; capture again")
        if resets is not None and not self.with_resets:
            raise ValueError("GraphedModule was captured without resets; build it with resets=True to pass them")
        state = self._init if state is None else state
        leaves = []
        for k in self.keys:
            v = state.get(k, None)
            if v is None:
                raise ValueError(f"GraphedModule: state lacks {k}; expected the keys of module.init_state")
            if v.requires_grad:
                raise ValueError(f"GraphedModule treats the incoming state as a constant, but {k} requires grad; "
                                 "pass state.detach() (truncated BPTT)")
            leaves.append(v)
        extra = []
        if self.with_resets:
            r = torch.zeros(self.shape[:2], dtype=torch.bool, device=self.device) if resets is None else resets
            if tuple(r.shape) != self.shape[:2]:
                raise ValueError(f"GraphedModule: resets must be {self.shape[:2]}, got {tuple(r.shape)}")
            extra = [r.to(device=self.device, dtype=torch.bool)]
        out = self.graphed(x, *extra, *leaves)
        new = TensorDict({}, batch_size=[self.shape[0]], device=self.device)
        for k, v in zip(self.keys, out[1:], strict=True):
            new.set(k, v.detach().clone() if self.use_graph else v)
        return out[0], new
