"""Named stacks for the eval suite: ``register_stack(name, builder)``, ``builder(d_hidden) -> MemoryModule``.

Builders resolve cell configs lazily by class name (``config_class("mLSTMCellConfig")``), so a stack whose
cell has not landed is reported as unavailable instead of breaking the import.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.config import config_class

Builder = Callable[[int], nn.Module]


@dataclass(frozen=True)
class StackEntry:
    """A registered stack: ``builder(d_hidden)`` and a one-line description."""

    name: str
    builder: Builder
    description: str = ""


_STACKS: dict[str, StackEntry] = {}

#: stacks of the quick suite (``cortex eval`` with no arguments), in order; missing ones are skipped
QUICK_STACKS: tuple[str, ...] = ("lstm", "mlstm", "axon", "transformer")
#: ``d_hidden`` used when a run does not set one
DEFAULT_D_HIDDEN = 32


def register_stack(name: str, builder: Builder, description: str = "") -> None:
    """Register (or replace) the stack ``name``."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"stack name must be a non-empty identifier, got {name!r}")
    if not callable(builder):
        raise TypeError(f"register_stack: builder must be callable, got {type(builder).__name__}")
    _STACKS[name] = StackEntry(name, builder, description)


def list_stacks() -> list[str]:
    """All registered stack names, in registration order."""
    return list(_STACKS)


def stack_status(name: str, d_hidden: int = DEFAULT_D_HIDDEN) -> str | None:
    """None when ``name`` builds at ``d_hidden``, else a one-line reason."""
    try:
        build_stack(name, d_hidden)
    except (ValueError, TypeError, ImportError, AttributeError, RuntimeError) as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def available_stacks(d_hidden: int = DEFAULT_D_HIDDEN) -> tuple[list[str], dict[str, str]]:
    """``(available names, {unavailable name: reason})``."""
    ok, missing = [], {}
    for name in _STACKS:
        reason = stack_status(name, d_hidden)
        if reason is None:
            ok.append(name)
        else:
            missing[name] = reason
    return ok, missing


def build_stack(name: str, d_hidden: int = DEFAULT_D_HIDDEN) -> nn.Module:
    """Build the registered stack ``name`` at width ``d_hidden``."""
    if name not in _STACKS:
        raise ValueError(f"unknown stack {name!r}; valid: {', '.join(_STACKS)}")
    return _STACKS[name].builder(d_hidden)


# --- helpers for builders -----------------------------------------------------------------------------------
def _require_attr(module: str, attr: str):
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise ImportError(f"{module}.{attr} is not available in this checkout") from None
    return obj


def _heads(width: int) -> int:
    """4 heads where ``width / 4`` still splits in half (mLSTM's qk factor 0.5), else fewer."""
    return next(h for h in (4, 2, 1) if width % (2 * h) == 0 or h == 1)


#: head size of the gated-delta stacks (Gated DeltaNet and fla use 128-256)
DELTA_HEAD_DIM = 64


def _delta_heads(width: int) -> int:
    """Heads of at least ``DELTA_HEAD_DIM`` dims (one head below that width), as many as divide ``width``.

    The delta rule reads ``S^T q`` with unit-norm q, k, and every token writes (erasing along its own key), so a
    head of ``Dh`` dims keeps few associations: on MQAR 32:4 at d=32 (512 steps) gated_delta reached 0.23 with
    4 heads of 16, 0.43 with 2 of 32 and 0.80 with 1 of 64. mLSTM does not need this: it has no normalisation
    and no erase. At d=128 (inner 256) this is the 4 heads of 64 the stack had before.
    """
    return next(h for h in range(max(1, width // DELTA_HEAD_DIM), 0, -1) if width % h == 0)


def _retentive_decay(stack: nn.Module) -> nn.Module:
    """Re-draw every gated-delta decay so a head keeps ``a = alpha_max * exp(-dt)`` of its memory per step at init,
    ``dt`` log-uniform in ``[1e-3, 5e-2]`` (``A = 1``): ``a`` in about ``[0.94, 0.99]``, like mLSTM's forget bias.

    The cell's Mamba2/fla draw (``A`` in ``[1, 16]``, ``dt`` in ``[1e-3, 1e-1]``) gives some heads ``a`` near 0.2: a
    few tokens of memory, and no gradient to learn more from a key 20 tokens back. With the one or two wide heads
    of a small stack one such draw decides the run: gated_delta on MQAR 32:4 at d=32 reached 0.24 and 0.08 on two
    seeds where these decays gave 0.92 and more.
    """
    from ..cells.gated_delta import DeltaMemoryCell

    with torch.no_grad():
        for cell in stack.modules():
            if isinstance(cell, DeltaMemoryCell):
                n = cell.A_log.numel()
                dt = torch.empty(n).uniform_(math.log(1e-3), math.log(5e-2)).exp()
                cell.A_log.zero_()
                cell.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
    return stack


def _cell(config_name: str, hidden: int, heads: Callable[[int], int] = _heads, **overrides):
    """The cell config ``config_name`` at its defaults and ``hidden`` (head counts ``heads(hidden)``)."""
    try:
        cls = config_class(config_name)
    except ValueError:
        raise ImportError(f"{config_name} is not available in this checkout") from None
    upd = {"num_heads": heads(hidden), "n_heads": heads(hidden), **overrides}
    return cls(hidden_size=hidden, **{k: v for k, v in upd.items() if k in cls.model_fields})


def _stack(d: int, blocks: list, post_norm: bool = True):
    from ..stacks.stack import CortexStackConfig, build_cortex

    return build_cortex(CortexStackConfig(d_hidden=d, blocks=blocks, post_norm=post_norm))


def _block(block_name: str, cell, **kw):
    return config_class(block_name)(cell=cell, **kw)


def _cell_stack(config_name: str, block_name: str, n_blocks: int = 2, heads: Callable[[int], int] = _heads,
                init: Callable[[nn.Module], nn.Module] | None = None, **over):
    """A builder: ``n_blocks`` blocks ``block_name`` around the cell ``config_name``."""

    def build(d: int):
        pre_up = block_name == "PreUpBlockConfig"
        inner, kw = (2 * d, {"proj_factor": 2.0}) if pre_up else (d, {})
        blocks = [_block(block_name, _cell(config_name, inner, heads, **over), **kw) for _ in range(n_blocks)]
        stack = _stack(d, blocks)
        return stack if init is None else init(stack)

    return build


def _delta_stack(config_name: str, block_name: str, **over):
    """``_cell_stack`` for the gated-delta cells: heads of >= 64 dims and retentive decays at init."""
    return _cell_stack(config_name, block_name, heads=_delta_heads, init=_retentive_decay, **over)


# --- the stacks ---------------------------------------------------------------------------------------------
def _lstm(d: int):
    stack = _stack(d, [_block("PassThroughBlockConfig", config_class("LSTMCellConfig")(hidden_size=None))])
    # Forget-gate bias +2 (Gers et al. 2000; Jozefowicz et al. 2015): with PyTorch's zero-mean init the cell
    # forgets half its content per step, so a cue 32 steps back gets no gradient signal in a short run.
    with torch.no_grad():
        for name, p in stack.named_parameters():
            if name.endswith(tuple(f"bias_ih_l{k}" for k in range(8))):
                h = p.shape[0] // 4
                p[h:2 * h] = 2.0  # nn.LSTM gate order: input, forget, cell, output
    return stack


def _gru(d: int):
    return _stack(d, [_block("PassThroughBlockConfig", config_class("GRUCellConfig")(hidden_size=None))])


def _conv(d: int):
    conv = config_class("CausalConv1dCellConfig")(hidden_size=None, kernel_size=4, activation="silu")
    return _stack(d, [_block("PassThroughBlockConfig", conv) for _ in range(2)])


def _xlstm(d: int):
    build = _require_attr("cortexmem.stacks", "build_xlstm_stack")
    return build(d, 2, mlstm_num_heads=_heads(2 * d), slstm_num_heads=_heads(d))


def _column_axms(d: int):
    build = _require_attr("cortexmem", "build_cortex_auto_stack")
    return build(d, 1, "AXMS")


def _hf_llama(d: int):
    """Two decoder layers of a tiny config-built Llama as cells (rolling KV cache of 64 tokens).

    For a real checkpoint: ``register_stack("my_llama", lambda d: build_hf_stack("path/or/name", mem_len=256))`` and
    run with ``--d-hidden`` equal to the model's hidden size.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig

    build = _require_attr("cortexmem.stacks", "build_hf_stack")
    heads = _heads(d)
    cfg = LlamaConfig(hidden_size=d, intermediate_size=2 * d, num_attention_heads=heads, num_key_value_heads=heads,
                      num_hidden_layers=2, vocab_size=8, max_position_embeddings=4096)
    return build(AutoModelForCausalLM.from_config(cfg), mem_len=64)


def _transformer(d: int):
    from .models import CausalTransformer

    return CausalTransformer(d, n_layers=2, n_heads=4 if d % 4 == 0 else 1)


register_stack("lstm", _lstm, "PassThrough(LSTM), forget-gate bias +2")
register_stack("gru", _gru, "PassThrough(GRU)")
register_stack("conv", _conv, "2 x PassThrough(CausalConv1d k=4)")
register_stack("mlstm", _cell_stack("mLSTMCellConfig", "PreUpBlockConfig"), "2 x PreUp(mLSTM)")
register_stack("slstm", _cell_stack("sLSTMCellConfig", "PostUpBlockConfig"), "2 x PostUp(sLSTM)")
register_stack("xlstm", _xlstm, "build_xlstm_stack(d, 2): PreUp(mLSTM), PostUp(sLSTM)")
register_stack("axon", _cell_stack("AxonCellConfig", "PostUpBlockConfig"), "2 x PostUp(Axon)")
register_stack("xl", _cell_stack("XLCellConfig", "PostUpGatedBlockConfig"), "2 x PostUpGated(XL)")
register_stack("agalite", _cell_stack("AGaLiTeCellConfig", "PostUpGatedBlockConfig"),
               "2 x PostUpGated(AGaLiTe)")
register_stack("gated_delta", _delta_stack("GatedDeltaCellConfig", "PreUpBlockConfig"),
               "2 x PreUp(GatedDelta), heads of >= 64 dims, retentive decays")
register_stack("hybrid", _cell_stack("HybridCellConfig", "PostUpGatedBlockConfig"),
               "2 x PostUpGated(Hybrid), window 512: attention over sequences up to 512")
register_stack("hybrid_w32", _cell_stack("HybridCellConfig", "PostUpGatedBlockConfig", window=32),
               "2 x PostUpGated(Hybrid, window 32): recall past 32 tokens goes through the delta memory")
register_stack("hybrid_w8", _delta_stack("HybridCellConfig", "PostUpBlockConfig", window=8),
               "2 x PostUp(Hybrid, window 8), as gated_delta's heads and decays: recall past 8 tokens goes through "
               "the delta memory")
register_stack("column_axms", _column_axms, "build_cortex_auto_stack(d, 1, 'AXMS')")
register_stack("hf_llama", _hf_llama, "2 pretrained-style Llama decoder layers as cells (tiny config, mem_len 64)")
register_stack("transformer", _transformer,
               "2 x (short conv, rotary causal attention, MLP) over the full context (non-recurrent)")
