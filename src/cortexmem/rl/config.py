"""``PPOConfig``: every setting of a recurrent-PPO run, validated before anything starts; ``resolve_device``."""

from __future__ import annotations

import re
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator


class PPOConfig(BaseModel):
    """Everything a run needs; saved with each checkpoint."""

    model_config = ConfigDict(extra="forbid")

    env: str
    stack: str = "lstm_plain"
    d_hidden: int = Field(default=64, ge=1)
    num_layers: int = Field(default=1, ge=1)
    frames: int = Field(default=100_000, ge=1)
    num_envs: int = Field(default=16, ge=1)
    rollout_len: int = Field(default=64, ge=1)
    bptt: int | None = Field(default=None, ge=1)
    epochs: int = Field(default=4, ge=1)
    minibatches: int = Field(default=4, ge=1)
    lr: float = Field(default=3e-4, gt=0)
    gamma: float = Field(default=0.99, gt=0, le=1)
    lmbda: float = Field(default=0.95, ge=0, le=1)
    clip_epsilon: float = Field(default=0.2, gt=0)
    #: clip the value update to ``old_value +- value_clip`` (None: plain squared error)
    value_clip: float | None = Field(default=None, gt=0)
    #: normalise advantages within each minibatch
    normalize_advantage: bool = True
    entropy_coeff: float = Field(default=0.01, ge=0)
    critic_coeff: float = Field(default=0.5, ge=0)
    max_grad_norm: float = Field(default=0.5, gt=0)
    seed: int = 0
    memory_inputs: bool | None = None
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    store_dtype: str = Field(default="fp32", pattern="^(fp32|bf16)$")
    #: where policy, value and memory run (envs always step on CPU)
    device: str = Field(default="cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$")
    #: bf16 autocast for encoder and memory on CUDA (heads, log-probs, values and the loss stay fp32)
    amp: bool = False
    #: rollout steps of the memory as one CUDA-graph replay (``auto``: on CUDA); the PPO update stays eager
    step_graph: str = Field(default="auto", pattern="^(auto|on|off)$")

    @model_validator(mode="after")
    def _check(self) -> PPOConfig:
        bptt = self.bptt or self.rollout_len
        if self.rollout_len % bptt:
            raise ValueError(f"bptt must divide rollout_len, got bptt={bptt} and rollout_len={self.rollout_len}")
        rows = self.num_envs * (self.rollout_len // bptt)
        if self.minibatches > rows:
            raise ValueError(f"minibatches ({self.minibatches}) exceeds the number of sequences per update ({rows})")
        return self


def resolve_device(spec: str) -> torch.device:
    """``cpu|cuda|cuda:N|auto`` -> a device that exists (``auto``: CUDA when available)."""
    if not isinstance(spec, str) or not re.fullmatch(r"cpu|auto|cuda(:\d+)?", spec):
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {spec!r}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r}: no CUDA device is available here (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev
