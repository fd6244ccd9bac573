"""StepRunner: single-step inference captured in a CUDA graph (launch-bound small batches replay in one go).

``runner = StepRunner(stack, batch=32, device="cuda")``; ``y = runner.step(x, resets=None)`` updates
``runner.state`` in place. On CPU (or with ``use_graph=False``) the same API runs eager ``module.step``.

A graph still pays a few microseconds per kernel, and a layer's step is dozens of small kernels.
``compile=True`` first fuses the step with ``torch.compile`` (an "AXMS" stack traces as one graph; ``nn.LSTM`` is a
graph break that runs eagerly; inductor merges the elementwise work into few kernels), then captures that:
seconds to a minute of compile once, for lower latency per step. Compiled results match eager ``step`` to
rounding, not bit for bit. ``compile="max-autotune"`` also lets inductor time Triton templates for the small
matmuls (one kernel with its bias/activation fused, instead of a cuBLAS split-K gemm and its reduction): minutes of
compile once. The runner captures the CUDA graph itself, so inductor's own graphs are always off.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict
from torch import Tensor

from ..core.module import MemoryModule
from .graphed import _Flat

#: ``compile=`` values -> torch.compile mode (None: its default). The runner captures its own CUDA graph, so the
#: modes that would make inductor capture one too map to their ``-no-cudagraphs`` form.
COMPILE_MODES = {"default": None, "max-autotune": "max-autotune-no-cudagraphs",
                 "max-autotune-no-cudagraphs": "max-autotune-no-cudagraphs"}


class StepRunner:
    """Runs ``module.step`` on static buffers; on CUDA the step is captured once and replayed."""

    def __init__(self, module: MemoryModule, batch: int, device: Any = "cuda", *, dtype: torch.dtype = torch.float32,
                 use_graph: bool | None = None, warmup: int = 3, compile: bool | str = False) -> None:
        if not isinstance(module, MemoryModule):
            raise TypeError(f"StepRunner expects a cortexmem MemoryModule, got {type(module).__name__}")
        if isinstance(compile, str):
            if compile not in COMPILE_MODES:
                raise ValueError(f"StepRunner: compile must be a bool or one of {sorted(COMPILE_MODES)}, "
                                 f"got {compile!r}")
        elif not isinstance(compile, bool):
            raise TypeError(f"StepRunner: compile must be a bool or a str, got {type(compile).__name__}")
        self.module = module
        self.device = torch.device(device)
        self.use_graph = self.device.type == "cuda" if use_graph is None else use_graph
        if self.use_graph and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {self.device}")
        self.x = torch.zeros(batch, module.input_size, device=self.device, dtype=dtype)
        self.resets = torch.zeros(batch, dtype=torch.bool, device=self.device)
        self.state = module.init_state(batch, device=self.device, dtype=dtype)
        self._init = self.state.clone()
        self.keys = list(self.state.keys(include_nested=True, leaves_only=True))
        self._compiled = None
        if compile:
            flat = _Flat(module, self.keys, batch, with_resets=True)

            def step_in_place(x: Tensor, resets: Tensor, *leaves: Tensor) -> Tensor:
                # writing the new state inside the compiled region lets inductor fuse the copies into the
                # kernels that produce them instead of launching one copy per state leaf
                out = flat(x, resets, *leaves)
                for leaf, new in zip(leaves, out[1:], strict=True):
                    leaf.copy_(new)
                return out[0]

            mode = COMPILE_MODES[compile] if isinstance(compile, str) else None
            # graph breaks (nn.LSTM) run eagerly
            self._compiled = torch.compile(step_in_place, dynamic=False, mode=mode)
        self.graph = None
        if self.use_graph:
            self._capture(warmup)

    def _body(self) -> Tensor:
        with torch.no_grad():
            if self._compiled is None:
                y, new = self.module.step(self.x, self.state, resets=self.resets)
                self.state.update_(new)
                return y
            return self._compiled(self.x, self.resets, *(self.state.get(k) for k in self.keys))

    def _capture(self, warmup: int) -> None:
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph):
                self.y = self._body()
        except RuntimeError as e:
            raise RuntimeError(
                f"StepRunner: {type(self.module).__name__}.step cannot be captured in a CUDA graph ({e}); "
                f"use StepRunner(..., use_graph=False)"
            ) from e
        self.state.update_(self._init)

    def step(self, x: Tensor, resets: Tensor | None = None) -> Tensor:
        """One step: ``x`` ``[B, H]`` -> ``y [B, H_out]`` (a view of a static buffer: clone it to keep it)."""
        if x.shape != self.x.shape:
            raise ValueError(f"StepRunner.step: expected x of shape {tuple(self.x.shape)}, got {tuple(x.shape)}")
        self.x.copy_(x)
        if resets is None:
            self.resets.zero_()
        else:
            if resets.shape != self.resets.shape:
                raise ValueError(
                    f"StepRunner.step: resets must be {tuple(self.resets.shape)}, got {tuple(resets.shape)}")
            self.resets.copy_(resets)
        if self.graph is None:
            return self._body()
        self.graph.replay()
        return self.y

    def set_state(self, state: TensorDict) -> None:
        """Copy ``state`` into the runner's static state."""
        self.state.update_(state.to(self.device))

    def reset(self, mask: Tensor | None = None) -> None:
        """Reset every row (``mask=None``) or the rows where ``mask`` is True."""
        if mask is None:
            self.state.update_(self._init)
        else:
            self.state.update_(self.module.reset_state(self.state, mask.to(self.device)))
