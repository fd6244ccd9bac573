"""Column: a mixture of expert blocks run on the same normalised input, mixed per token by a router.

``u = RMSNorm(x)``; ``Delta_i = Block_i(u) - u``; ``Delta~ = Delta + Mixer(Delta)`` (attention across the
expert axis, per token); ``alpha = softmax_E((log_softmax(z_g) + lambda * p_hat) / tau)`` restricted to the
top-k experts per token; ``r = sum_i alpha_i Delta~_i + (u - x)``; ``out = x + r + alpha_col * rho(r)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, model_validator
from tensordict import TensorDict
from torch import Tensor, nn

from ..cells.base import CellConfig
from ..core.config import TaggedConfig, polymorphic
from ..core.registry import register_block
from .base import BlockConfig, MemoryBlock, build_block
from .ffn import GatedFFN


class RouterConfig(TaggedConfig):
    """Per-token router: global prior logits ``z_g`` plus a query-key refinement ``lambda * p_hat``."""

    d_key: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    top_k: int | None = Field(default=None, ge=1)
    use_token_refinement: bool = True
    #: initial value of the learnable ``lambda`` (non-zero so the refinement receives gradient at init)
    refinement_scale: float = 1.0
    #: under ``top_k``: forward uses the renormalised top-k weights, backward the dense softmax's gradient
    #: (straight-through). Without it, ``top_k=1`` gives the router exactly zero gradient (alpha is always 1).
    straight_through: bool = True


class ColumnBlockConfig(BlockConfig):
    """Several expert blocks at ``d_hidden`` mixed per token; state ``{"expert_<BlockClass>_<i>": ...}``."""

    experts: list[polymorphic(BlockConfig)] = Field(min_length=1)
    router: RouterConfig = Field(default_factory=RouterConfig)
    use_mixer: bool = True
    mixer_d_key: int = Field(default=32, ge=1)
    #: inner width of ``rho`` (a gated FFN on the RMS-normalised residual) as a multiple of ``d_hidden``
    rho_factor: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _check_top_k(self) -> ColumnBlockConfig:
        k = self.router.top_k
        if k is not None and k > len(self.experts):
            raise ValueError(f"router.top_k must be <= number of experts ({len(self.experts)}), got {k}")
        return self

    def resolve(self, d_hidden: int) -> ColumnBlockConfig:
        return self.model_copy(update={"experts": [e.resolve(d_hidden) for e in self.experts]})

    @classmethod
    def example(cls, cell: CellConfig) -> ColumnBlockConfig:
        from .standard import PassThroughBlockConfig, PostUpBlockConfig

        return cls(
            experts=[PassThroughBlockConfig(cell=cell), PostUpBlockConfig(cell=cell)],
            router=RouterConfig(d_key=8), mixer_d_key=8,
        )


class ExpertMixer(nn.Module):
    """Single-head attention across the expert axis, per token: ``[B, T, E, H] -> [B, T, E, H]``.

    The output projection starts at zero (ReZero-style, so ``Delta~ = Delta`` at init); it receives gradient
    at once, which then reaches the query/key/value maps, so this is not a saddle.
    """

    def __init__(self, d: int, d_key: int) -> None:
        super().__init__()
        self.scale = 1.0 / math.sqrt(d_key)
        self.q = nn.Linear(d, d_key, bias=False)
        self.k = nn.Linear(d, d_key, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        nn.init.zeros_(self.o.weight)

    def forward(self, delta: Tensor) -> Tensor:
        # batched matmuls over (b, t): an einsum here permutes and copies around each bmm
        att = torch.matmul(self.q(delta), self.k(delta).transpose(-1, -2)) * self.scale
        return self.o(torch.matmul(att.softmax(-1), self.v(delta)))


class Router(nn.Module):
    """``alpha [B, T, E]`` from ``u [B, T, H]`` and the mixed deltas ``[B, T, E, H]``; rows sum to one.

    ``W_q``/``W_k`` use the default random init and ``lambda`` starts at ``refinement_scale``: zero query and
    key maps would be a saddle where neither gets gradient. Logits keep their graph under top-k; with
    ``straight_through`` every expert's logit gets the dense softmax's gradient while the forward values stay
    the exact renormalised top-k weights.
    """

    def __init__(self, d: int, num_experts: int, config: RouterConfig) -> None:
        super().__init__()
        self.config = config
        self.num_experts = num_experts
        self.global_logits = nn.Parameter(torch.zeros(num_experts))
        if config.use_token_refinement:
            self.query = nn.Linear(d, config.d_key, bias=False)
            self.key = nn.Linear(d, config.d_key, bias=False)
            self.refinement_scale = nn.Parameter(torch.tensor(float(config.refinement_scale)))
            self.key_scale = 1.0 / math.sqrt(config.d_key)

    def logits(self, u: Tensor, delta: Tensor) -> Tensor:
        """Pre-softmax routing logits ``[B, T, E]`` (temperature applied, before top-k)."""
        logits = torch.log_softmax(self.global_logits, dim=-1).to(u.dtype).expand(*u.shape[:-1], -1)
        if self.config.use_token_refinement:
            p_hat = torch.matmul(self.key(delta), self.query(u)[..., None]).squeeze(-1) * self.key_scale
            logits = logits + self.refinement_scale.to(u.dtype) * p_hat
        return logits / self.config.temperature

    def forward(self, u: Tensor, delta: Tensor) -> Tensor:
        logits = self.logits(u, delta)
        k = self.config.top_k
        if k is None or k >= self.num_experts:
            return logits.softmax(dim=-1)
        top = logits.topk(k, dim=-1).indices
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top, True)
        sparse = logits.masked_fill(~keep, float("-inf")).softmax(dim=-1)
        if not self.config.straight_through:
            return sparse
        dense = logits.softmax(dim=-1)
        return sparse.detach() + (dense - dense.detach())  # value: exactly ``sparse``


@register_block(ColumnBlockConfig)
class ColumnBlock(MemoryBlock):
    """Mixture of expert blocks with a per-token router (formula in the module docstring).

    Every expert runs on every call, even under ``top_k``: each expert is recurrent, so its state must advance
    on every input whatever the routing (skipping it would make its memory depend on past routing and break
    split-call equivalence), and the mixer reads every expert's delta. ``top_k`` therefore shapes the
    mixture, not the compute. After a forward, ``routing_weights`` holds the mean ``alpha`` per expert.
    """

    def __init__(self, config: ColumnBlockConfig, d_hidden: int) -> None:
        super().__init__(config, d_hidden)
        cfg = self.config
        self.experts = nn.ModuleList(build_block(e, d_hidden) for e in cfg.experts)
        self.expert_keys = [f"expert_{type(b).__name__}_{i}" for i, b in enumerate(self.experts)]
        self.norm = nn.RMSNorm(d_hidden)
        use_mixer = cfg.use_mixer and len(self.experts) > 1
        self.mixer = ExpertMixer(d_hidden, cfg.mixer_d_key) if use_mixer else None
        self.router = Router(d_hidden, len(self.experts), cfg.router)
        self.rho_norm = nn.RMSNorm(d_hidden)
        self.rho = GatedFFN(d_hidden, max(1, int(cfg.rho_factor * d_hidden)))
        self.alpha_col = nn.Parameter(torch.zeros(()))
        #: mean routing weight per expert ``[E]`` over the last forward's batch and time (detached, float32)
        self.routing_weights: Tensor | None = None

    def init_state(self, batch: int, *, device: Any = None, dtype: torch.dtype | None = None) -> TensorDict:
        inner = {k: e.init_state(batch, device=device, dtype=dtype)
                 for k, e in zip(self.expert_keys, self.experts, strict=True)}
        return TensorDict(inner, batch_size=[batch], device=device)

    def expert_deltas(self, u: Tensor, state: TensorDict, resets: Tensor | None) -> tuple[Tensor, TensorDict]:
        """``Delta [B, T, E, H]`` (expert output minus ``u``) and the experts' new state."""
        ys, new = [], {}
        for key, expert in zip(self.expert_keys, self.experts, strict=True):
            y, new[key] = expert.forward_sequence(u, state[key], resets)
            ys.append(y)
        delta = torch.stack(ys, dim=2) - u[:, :, None]  # one subtraction for every expert
        return delta, TensorDict(new, batch_size=state.batch_size, device=state.device)

    def forward_sequence(
        self, x: Tensor, state: TensorDict, resets: Tensor | None
    ) -> tuple[Tensor, TensorDict]:
        u = self.norm(x)
        delta, new_state = self.expert_deltas(u, state, resets)
        if self.mixer is not None:
            delta = delta + self.mixer(delta)
        alpha = self.router(u, delta)
        self.routing_weights = alpha.detach().float().mean(dim=(0, 1))
        r = torch.matmul(alpha[:, :, None], delta).squeeze(2) + (u - x)
        out = x + r + self.alpha_col.to(x.dtype) * self.rho(self.rho_norm(r))
        return out, new_state


def collect_routing_weights(module: nn.Module) -> dict[str, Tensor]:
    """``{module path: mean routing weight per expert [E]}`` for every column that has run a forward."""
    return {name: m.routing_weights for name, m in module.named_modules()
            if isinstance(m, ColumnBlock) and m.routing_weights is not None}
