"""Eval models: token embedding -> stack -> linear head, and the causal-attention baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import Tensor, nn

from ..core.module import MemoryModule


def rotary(x: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding of ``x [B, NH, T, Dh]`` (pairs ``(2i, 2i+1)`` rotated by ``t * base^(-2i/Dh)``)."""
    steps, dh = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, dh, 2, device=x.device, dtype=torch.float32) / dh)
    ang = torch.arange(steps, device=x.device, dtype=torch.float32)[:, None] * inv  # (T, Dh/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class AttentionLayer(nn.Module):
    """Pre-norm layer: short causal conv (residual), rotary causal self-attention, GELU MLP: ``[B, T, d]``."""

    def __init__(self, d: int, n_heads: int, ff_mult: int, conv_size: int) -> None:
        super().__init__()
        self.n_heads, self.conv_size = n_heads, conv_size
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.conv = nn.Conv1d(d, d, conv_size, groups=d) if conv_size > 1 else None
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, ff_mult * d), nn.GELU(), nn.Linear(ff_mult * d, d))

    def forward(self, x: Tensor) -> Tensor:
        B, T, d = x.shape
        h = self.norm1(x)
        if self.conv is not None:
            # each position sees the tokens just before it: a key and its value meet in one vector
            padded = F.pad(h.transpose(1, 2), (self.conv_size - 1, 0))  # (B, d, K - 1 + T)
            h = h + self.conv(padded).transpose(1, 2)
        q, k, v = self.qkv(h).view(B, T, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)  # (B, NH, T, Dh)
        y = F.scaled_dot_product_attention(rotary(q), rotary(k), v, is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(B, T, d))
        return x + self.mlp(self.norm2(x))


class CausalTransformer(nn.Module):
    """Pre-norm causal self-attention over the full context: ``[B, T, d] -> [B, T, d]``.

    Each layer is a short causal depthwise conv (kernel ``conv_size``, added to its input), rotary causal
    attention and a GELU MLP, as in Zoology's MQAR models (a short conv before attention). Without the conv a
    key and its value meet only through a previous-token head learned from positions, which a short run does not
    find: MQAR stayed on the "one of the context values" plateau. A non-recurrent baseline: it always sees the
    full sequence (truncated BPTT does not apply) and its "step" check recomputes prefixes (a causality check).
    """

    def __init__(self, d_hidden: int, n_layers: int = 2, n_heads: int = 4, ff_mult: int = 2,
                 conv_size: int = 3) -> None:
        super().__init__()
        if d_hidden % n_heads or (d_hidden // n_heads) % 2:
            raise ValueError(f"CausalTransformer: d_hidden={d_hidden} must split into n_heads={n_heads} heads of "
                             "even size (rotary pairs)")
        self.layers = nn.ModuleList(AttentionLayer(d_hidden, n_heads, ff_mult, conv_size) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_hidden)
        self.d_hidden = self.input_size = d_hidden
        self.conv_size = conv_size

    def state_floats(self, length: int) -> int:
        """Floats a step-by-step decoder keeps after ``length`` tokens: the KV cache and the conv buffers."""
        per_layer = 2 * length * self.d_hidden + (self.conv_size - 1) * self.d_hidden
        return len(self.layers) * per_layer

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


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

    def forward(self, tokens: Tensor, mask: Tensor | None, state: TensorDict | None = None
                ) -> tuple[Tensor, TensorDict | None]:
        """Logits ``[M, C]`` at the ``M`` True positions of ``mask [B, T]`` (row-major), and the new state; with
        ``mask=None`` logits ``[B, T, C]`` at every position (no data-dependent shape: no host sync)."""
        feats, state = self.features(tokens, state)
        return self.head(feats if mask is None else feats[mask]), state


def state_floats(model: EvalModel, length: int) -> int:
    """State elements one sequence carries, summed over layers: the floating-point entries of a recurrent core's
    ``init_state(1)`` (constant in ``length``), or the non-recurrent baseline's KV cache after ``length`` tokens."""
    if not model.recurrent:
        return model.core.state_floats(length)
    state = model.core.init_state(1, device="cpu", dtype=torch.float32)
    return sum(v.numel() for v in state.values(True, True) if v.is_floating_point())


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
