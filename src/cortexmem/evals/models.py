"""Eval models: token embedding -> stack -> linear head, and the causal-attention baseline."""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.module import MemoryModule


class CausalTransformer(nn.Module):
    """Pre-norm causal self-attention over the full context, sinusoidal positions: ``[B, T, d] -> [B, T, d]``.

    A non-recurrent baseline: it has no state to carry, so it always sees the full sequence (truncated BPTT
    does not apply) and its "step" check recomputes prefixes, which verifies causality.
    """

    def __init__(self, d_hidden: int, n_layers: int = 2, n_heads: int = 4, ff_mult: int = 2) -> None:
        super().__init__()
        if d_hidden % n_heads:
            raise ValueError(f"CausalTransformer: n_heads={n_heads} must divide d_hidden={d_hidden}")
        layer = nn.TransformerEncoderLayer(d_hidden, n_heads, ff_mult * d_hidden, dropout=0.0,
                                           batch_first=True, norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_hidden)
        self.d_hidden = self.input_size = d_hidden

    def positions(self, steps: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        pos = torch.arange(steps, device=device, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, self.d_hidden, 2, device=device, dtype=torch.float32)
                         * (-math.log(10000.0) / self.d_hidden))
        pe = torch.zeros(steps, self.d_hidden, device=device)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq)[:, : self.d_hidden // 2]
        return pe.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        steps = x.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(steps, device=x.device, dtype=x.dtype)
        h = self.encoder(x + self.positions(steps, x.device, x.dtype), mask=causal, is_causal=True)
        return self.norm(h)


class EvalModel(nn.Module):
    """``tokens [B, T]`` -> embedding -> ``core`` -> head; logits only where the loss mask is True."""

    def __init__(self, core: nn.Module, vocab_size: int, num_classes: int, d_hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_hidden)
        self.core = core
        self.head = nn.Linear(d_hidden, num_classes)
        self.recurrent = isinstance(core, MemoryModule)

    def features(self, tokens: Tensor, state: TensorDict | None = None) -> tuple[Tensor, TensorDict | None]:
        """``[B, T]`` -> ``([B, T, d], new_state)`` (state is None for the non-recurrent baseline)."""
        x = self.embed(tokens)
        if self.recurrent:
            return self.core(x, state)
        if state is not None:
            raise ValueError(f"{type(self.core).__name__} is not recurrent; state must be None")
        return self.core(x), None

    def forward(self, tokens: Tensor, mask: Tensor, state: TensorDict | None = None
                ) -> tuple[Tensor, TensorDict | None]:
        """Logits ``[M, C]`` at the ``M`` True positions of ``mask [B, T]`` (row-major), and the new state."""
        feats, state = self.features(tokens, state)
        return self.head(feats[mask]), state


@torch.no_grad()
def step_vs_sequence_error(model: EvalModel, tokens: Tensor, max_prefixes: int = 8) -> tuple[float, str]:
    """Max abs difference of the logits between one sequence call and step-by-step decoding.

    Recurrent cores: a loop of ``core.step`` over every position (mode "step"). The attention baseline:
    recomputing up to ``max_prefixes`` prefixes ``tokens[:, :t+1]`` against the full call (mode "prefix").
    """
    was_training = model.training
    model.eval()
    try:
        seq_logits = model.head(model.features(tokens)[0])  # (B, T, C)
        steps = tokens.shape[1]
        if model.recurrent:
            x = model.embed(tokens)
            state = model.core.init_state(tokens.shape[0], device=tokens.device, dtype=x.dtype)
            outs = []
            for t in range(steps):
                y, state = model.core.step(x[:, t], state)
                outs.append(y)
            step_logits = model.head(torch.stack(outs, 1))
            return (step_logits - seq_logits).abs().max().item(), "step"
        picks = torch.linspace(0, steps - 1, min(max_prefixes, steps)).round().long().unique().tolist()
        err = 0.0
        for t in picks:
            prefix = model.head(model.features(tokens[:, : t + 1])[0][:, t])
            err = max(err, (prefix - seq_logits[:, t]).abs().max().item())
        return err, "prefix"
    finally:
        model.train(was_training)
