"""``MemoryConfig``: how the memory sidecar is sized, where it attaches, and which registered cell it runs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..blocks.sidecar import SidecarBlockConfig
from ..cells.base import CellConfig
from ..core.config import TaggedConfig, config_class, polymorphic


class MemoryConfig(TaggedConfig):
    """Sidecar settings; the defaults are the recipe ``benchmarks/llm_memory.py`` measures (``PRESETS["niah"]``).

    A plain gated-delta memory reading the token embeddings through an induction-initialised 16-tap conv, with a
    context-aware write gate, writing into the last decoder layer. ``MemoryConfig.preset(name)`` gives the others.
    ``cell=None`` builds the gated-delta memory (hybrid when ``use_hybrid``).
    """

    rank_fast: int = Field(default=32, ge=1, description="compressor rank in front of the memory write")
    alpha_max: float = Field(default=1.0, gt=0.0, le=1.0, description="upper bound of the per-step decay")
    use_hybrid: bool = Field(default=False, description="local window attention + delta memory (HybridCell)")
    chunk_size: int = Field(default=512, ge=1, description="tokens the base model sees at once when streaming")
    num_heads: int = Field(default=1, ge=1)
    head_dim: int = Field(default=128, ge=1)
    layers: Literal["auto"] | list[int] = Field(default_factory=lambda: [-1],
                                                description="decoder layer indices to wrap (-1: the last)")
    compressor: str = Field(default="none", description="'none' or a compressor the memory cell knows")
    window: int | None = Field(default=None, ge=1, description="hybrid local window (default: 64)")
    memory_chunk: int = Field(default=64, ge=1, description="chunk size of the cell's chunkwise kernel")
    use_short_conv: bool = True
    cell: polymorphic(CellConfig) | None = Field(default=None, description="explicit cell (overrides the above)")
    norm_eps: float = Field(default=1e-6, gt=0.0)
    decay_init: float | None = Field(
        default=1e-6, gt=0.0, lt=1.0,
        description="per-token forgetting 1 - a/alpha_max at init (None: the cell's own init); long-context "
                    "recall wants alpha_max=1.0 and a tiny value such as 1e-6 so filler barely decays")
    write_init: float | None = Field(
        default=0.05, gt=0.0, lt=1.0,
        description="write strength b at init (None: the cell's own init, about 0.5); small values keep filler "
                    "from overwriting the memory before the write gate has learned to pick what to store")

    read_from: Literal["residual", "embeddings"] = Field(
        default="embeddings",
        description="what the memory reads and writes from: the wrapped layer's residual stream, or the token "
                    "embeddings (input of layer 0; identical for the same token in the needle and the question, "
                    "so keys need not be context-invariant); the output always goes into the wrapped layer")

    conv_kernel: int = Field(default=16, ge=1, description="taps of the cell's short q/k/v conv (its local context)")
    induction_init: bool = Field(
        default=True,
        description="init the short conv as an induction pair: the key of token t sees tokens t-K+1..t-1, the "
                    "query of token t sees t-K+2..t with the same weights, the value is token t alone; so the "
                    "query right before a repeated context matches the key written at its continuation from step 0")

    zero_init: Literal["gate", "up"] = Field(
        default="up",
        description="what starts at zero so the logits equal the base model's at init: the output 'gate' "
                    "(gate grows first, everything upstream waits for it) or the output projection 'up' with the "
                    "gate at 1 (up learns at once as a linear read-out of the memory: much faster to train)")

    gate_context: int = Field(
        default=16, ge=0,
        description="taps of a causal conv over the memory input that adds a learned term to the write gate's "
                    "logit (0: off); the cell's own gate sees one token, so it cannot tell a digit of "
                    "'The secret code of <name> is <digits>.' from a digit in filler -- with context it can")
    gate_context_hidden: int = Field(default=32, ge=1, description="channels of the gate-context conv")
    memory_backend: str = Field(
        default="auto",
        description="backend of the gated-delta op in the memory cell: auto, torch, triton (no grad) or "
                    "triton_autograd (Triton forward + backward, bf16; `cortex info` lists them)")

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, v):
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError(f"layers must be 'auto' or a non-empty list of distinct indices, got {v}")
        return v

    @model_validator(mode="after")
    def _check_induction(self):
        if self.induction_init and self.cell is None and (
                self.use_hybrid or self.compressor != "none" or not self.use_short_conv or self.conv_kernel < 2):
            raise ValueError("induction_init needs the plain gated-delta cell (use_hybrid=False, compressor='none', "
                             "use_short_conv=True, conv_kernel >= 2); pass induction_init=False or use "
                             "MemoryConfig.preset('hybrid')")
        return self

    @classmethod
    def preset(cls, name: str, **overrides) -> MemoryConfig:
        """A named recipe (``PRESETS``) with ``overrides`` applied on top."""
        if name not in PRESETS:
            raise ValueError(f"unknown MemoryConfig preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def memory_width(self) -> int:
        """Width of the memory cell (``num_heads * head_dim`` unless an explicit cell sets it)."""
        if self.cell is not None and self.cell.hidden_size is not None:
            return self.cell.hidden_size
        return self.num_heads * self.head_dim

    def resolve_layers(self, num_layers: int) -> list[int]:
        """Concrete sorted layer indices for a base model with ``num_layers`` decoder layers."""
        if self.layers == "auto":
            # one read/write point mid-depth: residual features are contextual there and later layers can use
            # what the memory injects
            return [max(0, (num_layers - 1) // 2)]
        out = sorted(i + num_layers if i < 0 else i for i in self.layers)
        bad = [i for i in out if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"layers {self.layers} out of range for a base model with {num_layers} layers")
        return out

    def block_config(self) -> SidecarBlockConfig:
        """The registered block each wrapped layer gets: a :class:`SidecarBlockConfig` around ``cell_config()``."""
        return SidecarBlockConfig(
            cell=self.cell_config(), norm="rmsnorm", norm_eps=self.norm_eps, zero_init=self.zero_init,
            gate_context=self.gate_context, gate_context_hidden=self.gate_context_hidden,
            decay_init=self.decay_init, write_init=self.write_init, induction_init=self.induction_init,
        )

    def cell_config(self) -> CellConfig:
        """The registered cell config the memory is built from (``hidden_size`` filled in)."""
        width = self.memory_width
        if self.cell is not None:
            return self.cell if self.cell.hidden_size is not None else self.cell.model_copy(
                update={"hidden_size": width})
        name = "HybridCellConfig" if self.use_hybrid else "GatedDeltaCellConfig"
        try:
            cls = config_class(name)
        except ValueError:
            raise ValueError(
                f"MemoryConfig needs {name} (the gated-delta cells), which is not registered in this install; "
                f"pass MemoryConfig(cell=<any registered CellConfig>) to use another cell"
            ) from None
        wanted = {
            "hidden_size": width, "num_heads": self.num_heads, "head_dim": self.head_dim,
            "chunk_size": self.memory_chunk, "alpha_max": self.alpha_max, "compressor": self.compressor,
            "rank": self.rank_fast, "window": self.window or 64, "use_short_conv": self.use_short_conv,
            "conv_kernel_size": self.conv_kernel, "backend": self.memory_backend,
        }
        return cls(**{k: v for k, v in wanted.items() if k in cls.model_fields})


#: named recipes: ``niah`` is the default; ``hybrid`` the first release's default (local window attention + delta
#: memory on the mid-depth residual stream, zero output gate); ``residual`` the same without the window
_CLASSIC = dict(alpha_max=0.99, use_hybrid=True, num_heads=4, head_dim=32, layers="auto", compressor="linear",
                decay_init=None, write_init=None, read_from="residual", conv_kernel=4, induction_init=False,
                zero_init="gate", gate_context=0)
PRESETS: dict[str, dict] = {"niah": {}, "hybrid": _CLASSIC, "residual": {**_CLASSIC, "use_hybrid": False}}

#: name used by the original Cortex sidecar release
CortexWrapConfig = MemoryConfig
