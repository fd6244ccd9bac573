"""Fast LSTM path: ``torch.nn.LSTM`` (cuDNN on GPU) over the segments between reset columns, and
:func:`register_rnn`, the registry entries of the cuDNN recurrences (``lstm``, ``gru``).

The loop runs over the distinct time steps at which *any* row resets (usually few), never over time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..registry import register_backend, register_reference


def lstm_segmented(
    lstm: nn.LSTM, x: Tensor, h0: Tensor, c0: Tensor, resets: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as :func:`lstm_naive` with the weights of ``lstm`` (``batch_first=True``)."""
    h = h0.transpose(0, 1)  # (L, B, H)
    c = c0.transpose(0, 1)
    if resets is not None and x.shape[1] == 1:  # one step: no host sync, so CUDA graphs can capture it
        r = resets[None, :, 0, None]
        h, c = torch.where(r, torch.zeros_like(h), h), torch.where(r, torch.zeros_like(c), c)
        resets = None
    if resets is None:
        y, (h, c) = lstm(x, (h.contiguous(), c.contiguous()))
        return y, h.transpose(0, 1), c.transpose(0, 1)
    cuts = torch.nonzero(resets.any(0)).flatten().tolist()
    bounds = sorted({0, *cuts, x.shape[1]})
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        r = resets[None, :, start, None]
        h, c = torch.where(r, torch.zeros_like(h), h), torch.where(r, torch.zeros_like(c), c)
        y, (h, c) = lstm(x[:, start:end], (h.contiguous(), c.contiguous()))
        outs.append(y)
    return torch.cat(outs, dim=1), h.transpose(0, 1), c.transpose(0, 1)


# --- registry entries of the cuDNN recurrences (lstm, gru) ---------------------------------------------
# the cells' ``<op>_segmented(module, ...)`` call taken with explicit weights, so ``cortex doctor`` checks it
# against the ``<op>_naive`` step loop
_WEIGHTS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


class _Call(nn.Module):
    """``segmented(self.rnn, ...)`` as a module, so ``functional_call`` can swap in the weights."""

    def __init__(self, rnn: nn.RNNBase, segmented: Callable) -> None:
        super().__init__()
        self.rnn, self.segmented = rnn, segmented

    def forward(self, *args: Tensor | None):
        return self.segmented(self.rnn, *args)


def register_rnn(op: str, rnn_class: type[nn.RNNBase], segmented: Callable, naive: Callable, gates: int,
                 n_states: int) -> None:
    """Register ``op``'s ``torch`` backend (``rnn_class``, one layer) and its reference ``naive``; the doctor's
    inputs are ``(x, w_ih, w_hh, b_ih, b_hh, *initial states, resets)``."""

    def fast(x: Tensor, *args: Tensor | None):
        weights, rest = args[:4], args[4:]
        call = _Call(rnn_class(x.shape[-1], weights[1].shape[1], batch_first=True, device=x.device,
                               dtype=x.dtype), segmented)
        params = {f"rnn.{name}": w for name, w in zip(_WEIGHTS, weights, strict=True)}
        return torch.func.functional_call(call, params, (x, *rest))

    def reference(x: Tensor, *args: Tensor | None):
        return naive(x, [tuple(args[:4])], *args[4:])

    def inputs(device: torch.device, dtype: torch.dtype) -> tuple:
        g = torch.Generator().manual_seed(0)
        B, T, I, H = 2, 37, 5, 6
        x = torch.randn(B, T, I, generator=g)
        w_ih, w_hh = torch.randn(gates * H, I, generator=g) / 3, torch.randn(gates * H, H, generator=g) / 3
        b_ih, b_hh = torch.randn(gates * H, generator=g) / 3, torch.randn(gates * H, generator=g) / 3
        states = tuple(torch.randn(B, 1, H, generator=g) for _ in range(n_states))
        resets = (torch.rand(B, T, generator=g) < 0.1).to(device)
        return tuple(t.to(device=device, dtype=dtype) for t in (x, w_ih, w_hh, b_ih, b_hh, *states)) + (resets,)

    register_backend(op, "torch", fast, priority=0, note=f"nn.{rnn_class.__name__} (cuDNN on GPU) over reset segments")
    register_reference(op, reference, inputs)
