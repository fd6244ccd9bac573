"""Named stacks shared by ``cortex eval``, ``cortex rl`` and the benchmarks: one meaning per name.

``register_stack(name, builder)`` with ``builder(d_hidden) -> MemoryModule``; ``build_stack(name, d_hidden,
num_layers)``. The built-in stacks repeat their blocks ``num_layers`` times (the descriptions give one repeat);
a stack registered with a plain ``builder(d_hidden)`` fixes its depth and builds only with ``num_layers=1``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.config import config_class
from ..core.registry import cell_names, cell_tokens
from .stack import CortexStack, CortexStackConfig, build_cortex

Builder = Callable[[int], nn.Module]
LayeredBuilder = Callable[[int, int], nn.Module]

#: ``d_hidden`` used when a run does not set one
DEFAULT_D_HIDDEN = 32


@dataclass(frozen=True)
class StackEntry:
    """A registered stack: ``builder(d_hidden)``, a one-line description, and ``layered(d_hidden, repeats)``
    when the stack can be repeated."""

    name: str
    builder: Builder
    description: str = ""
    layered: LayeredBuilder | None = None


_STACKS: dict[str, StackEntry] = {}


def register_stack(name: str, builder: Builder, description: str = "", *,
                   layered: LayeredBuilder | None = None) -> None:
    """Register (or replace) the stack ``name``; ``layered(d_hidden, repeats)``, if given, serves ``num_layers``."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"stack name must be a non-empty identifier, got {name!r}")
    if not callable(builder):
        raise TypeError(f"register_stack: builder must be callable, got {type(builder).__name__}")
    _STACKS[name] = StackEntry(name, builder, description, layered)


def list_stacks() -> list[str]:
    """All registered stack names, in registration order."""
    _sync_cells()
    return list(_STACKS)


def describe_stack(name: str) -> str:
    """The one-line description of the stack ``name``."""
    return _entry(name).description


def build_stack(name: str, d_hidden: int = DEFAULT_D_HIDDEN, num_layers: int = 1) -> nn.Module:
    """Build the registered stack ``name`` at width ``d_hidden``, its blocks repeated ``num_layers`` times."""
    entry = _entry(name)
    if num_layers == 1:
        return entry.builder(d_hidden)
    if entry.layered is None:
        raise ValueError(f"stack {name!r} fixes its depth; got num_layers={num_layers}, expected 1")
    return entry.layered(d_hidden, num_layers)


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
    for name in list_stacks():
        reason = stack_status(name, d_hidden)
        if reason is None:
            ok.append(name)
        else:
            missing[name] = reason
    return ok, missing


def _entry(name: str) -> StackEntry:
    if name not in _STACKS:
        _sync_cells()
    if name not in _STACKS:
        raise ValueError(f"unknown stack {name!r}; valid: {', '.join(_STACKS)}")
    return _STACKS[name]


def _register(name: str, layered: LayeredBuilder, description: str) -> None:
    register_stack(name, functools.partial(layered, num_layers=1), description, layered=layered)


# --- helpers for builders -----------------------------------------------------------------------------------
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
    and no erase. At d=128 (inner 256) this is 4 heads of 64.
    """
    return next(h for h in range(max(1, width // DELTA_HEAD_DIM), 0, -1) if width % h == 0)


def _retentive_decay(stack: nn.Module) -> nn.Module:
    """Re-draw every gated-delta decay so a head keeps ``a = exp(-dt)`` of its memory per step at init, ``dt``
    log-uniform in ``[1e-3, 5e-2]`` (``A = 1``): ``a`` in about ``[0.94, 0.99]``, like mLSTM's forget bias.

    The cell's Mamba2-style draw (``A`` in ``[1, 16]``, ``dt`` in ``[1e-3, 1e-1]``) gives some heads ``a`` near 0.2:
    a few tokens of memory, and no gradient to learn more from a key 20 tokens back. With the one or two wide heads
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
    cls = config_class(config_name)
    upd = {"num_heads": heads(hidden), "n_heads": heads(hidden), **overrides}
    return cls(hidden_size=hidden, **{k: v for k, v in upd.items() if k in cls.model_fields})


def _stack(d: int, blocks: list) -> CortexStack:
    return build_cortex(CortexStackConfig(d_hidden=d, blocks=blocks))


def _block(block_name: str, cell, **kw):
    return config_class(block_name)(cell=cell, **kw)


def _cell_stack(token: str, n_blocks: int = 2, *, block: str | None = None, heads: Callable[[int], int] = _heads,
                init: Callable[[nn.Module], nn.Module] | None = None, **over) -> LayeredBuilder:
    """A builder: ``n_blocks`` blocks of the cell token ``token`` (its block, or ``block``, around its cell), per
    repeat; ``heads(width)`` head counts, ``init(stack)`` applied after the build."""

    def build(d: int, num_layers: int) -> CortexStack:
        tok = cell_tokens()[token]
        block_name = block or tok.block
        pre_up = block_name == "PreUpBlockConfig"
        inner, kw = (2 * d, {"proj_factor": 2.0}) if pre_up else (d, {})
        cell = _cell(tok.config.__name__, inner, heads, **{**tok.fields, **over})
        stack = _stack(d, [_block(block_name, cell, **kw) for _ in range(n_blocks * num_layers)])
        return stack if init is None else init(stack)

    return build


def _delta_stack(token: str, **over) -> LayeredBuilder:
    """``_cell_stack`` for the gated-delta cells: heads of >= 64 dims and retentive decays at init."""
    return _cell_stack(token, heads=_delta_heads, init=_retentive_decay, **over)


def _sync_cells() -> None:
    """Every registered cell with a short name is a stack of 2 of its token's blocks, unless a stack has its name."""
    for name, token in cell_names().items():
        if name not in _STACKS:
            tok = cell_tokens()[token]
            what = f"{tok.block.removesuffix('BlockConfig')}({tok.config.__name__.removesuffix('CellConfig')})"
            _register(name, _cell_stack(token), f"2 x {what}")


# --- the stacks ---------------------------------------------------------------------------------------------
def _lstm_plain(d: int, num_layers: int) -> CortexStack:
    return _stack(d, [_block("PassThroughBlockConfig", config_class("LSTMCellConfig")())] * num_layers)


def _lstm(d: int, num_layers: int) -> CortexStack:
    stack = _lstm_plain(d, num_layers)
    # Forget-gate bias +2 (Gers et al. 2000; Jozefowicz et al. 2015): with PyTorch's zero-mean init the cell
    # forgets half its content per step, so a cue 32 steps back gets no gradient signal in a short run.
    with torch.no_grad():
        for name, p in stack.named_parameters():
            if name.endswith(tuple(f"bias_ih_l{k}" for k in range(8))):
                h = p.shape[0] // 4
                p[h:2 * h] = 2.0  # nn.LSTM gate order: input, forget, cell, output
    return stack


def _gru(d: int, num_layers: int) -> CortexStack:
    return _stack(d, [_block("PassThroughBlockConfig", config_class("GRUCellConfig")())] * num_layers)


def _conv_cell():
    return config_class("CausalConv1dCellConfig")(kernel_size=4, activation="silu")


def _conv(d: int, num_layers: int) -> CortexStack:
    return _stack(d, [_block("PassThroughBlockConfig", _conv_cell()) for _ in range(2 * num_layers)])


def _conv_preup(d: int, num_layers: int) -> CortexStack:
    return _stack(d, [_block("PreUpBlockConfig", _conv_cell(), proj_factor=2.0) for _ in range(num_layers)])


def _conv_lstm(d: int, num_layers: int) -> CortexStack:
    conv = _block("PreUpBlockConfig", _conv_cell(), proj_factor=2.0)
    lstm = _block("PostUpGatedBlockConfig", config_class("LSTMCellConfig")())
    return _stack(d, [conv, lstm] * num_layers)


def _xlstm(d: int, num_layers: int) -> CortexStack:
    from .xlstm import build_xlstm_stack

    return build_xlstm_stack(d, 2 * num_layers, mlstm_num_heads=_heads(2 * d), slstm_num_heads=_heads(d))


def _column_axms(d: int, num_layers: int) -> CortexStack:
    from .patterns import build_cortex_auto_stack

    return build_cortex_auto_stack(d, num_layers, "AXMS")


def _hf_llama(d: int) -> nn.Module:
    """Two decoder layers of a tiny config-built Llama as cells (rolling KV cache of 64 tokens).

    For a real checkpoint: ``register_stack("my_llama", lambda d: build_hf_stack("path/or/name", mem_len=256))`` and
    run with ``--d-hidden`` equal to the model's hidden size.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig

    from .hf import build_hf_stack

    heads = _heads(d)
    cfg = LlamaConfig(hidden_size=d, intermediate_size=2 * d, num_attention_heads=heads, num_key_value_heads=heads,
                      num_hidden_layers=2, vocab_size=8, max_position_embeddings=4096)
    return build_hf_stack(AutoModelForCausalLM.from_config(cfg), mem_len=64)


_register("lstm", _lstm, "PassThrough(LSTM), forget-gate bias +2")
_register("gru", _gru, "PassThrough(GRU)")
_register("conv", _conv, "2 x PassThrough(CausalConv1d k=4)")
_register("gated_delta", _delta_stack("D"), "2 x PreUp(GatedDelta), heads of >= 64 dims, retentive decays")
_sync_cells()  # mlstm, slstm, axon, xl, agalite, hybrid, ...: 2 x their token's block
_register("mlstm_qk1", _cell_stack("M", qk_dim_factor=1.0),
          "2 x PreUp(mLSTM), keys as wide as values (qk_dim_factor 1): twice mlstm's key dims, for recall of more "
          "pairs")
_register("hybrid", _delta_stack("H"),
          "2 x PostUp(Hybrid, window 512), gated_delta's heads and decays: attention over sequences up to 512")
_register("xlstm", _xlstm, "build_xlstm_stack(d, 2): PreUp(mLSTM), PostUp(sLSTM)")
_register("hybrid_w32", _delta_stack("H", window=32),
          "2 x PostUp(Hybrid, window 32), as hybrid: recall past 32 tokens goes through the delta memory")
_register("hybrid_w8", _delta_stack("H", window=8),
          "2 x PostUp(Hybrid, window 8), gated_delta's heads and decays: recall past 8 tokens goes through the delta "
          "memory")
_register("column_axms", _column_axms, "build_cortex_auto_stack(d, 1, 'AXMS')")
register_stack("hf_llama", _hf_llama, "2 pretrained-style Llama decoder layers as cells (tiny config, mem_len 64)")
_register("lstm_plain", _lstm_plain, "PassThrough(LSTM), PyTorch's init (the RL baseline; cortex rl's former 'lstm')")
_register("conv_preup", _conv_preup, "PreUp(CausalConv1d k=4, x2) (cortex rl's former 'conv')")
_register("conv_lstm", _conv_lstm, "PreUp(CausalConv1d k=4, x2), PostUpGated(LSTM)")
