"""The ``results.json`` schema (pydantic): settings, one record per (stack, task, length), skipped stacks."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: 2: every run carries ``d_hidden``, ``chance`` and ``state_floats``; settings carry ``widths`` and ``preset``
SCHEMA_VERSION = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalSettings(_Strict):
    """The training and data settings shared by every run of one invocation."""

    tasks: list[str]
    stacks: list[str]
    lengths: list[int] | None = None
    mqar_slices: list[tuple[int, int]] | None = None
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    seed: int
    d_hidden: int = Field(ge=1)
    #: the widths swept (``--d-hidden 64,128``; one run per width); None: only ``d_hidden``
    widths: list[int] | None = None
    #: the preset that chose these settings (``--preset``), with ``quick`` its CPU smoke
    preset: str | None = None
    train_size: int = Field(ge=1)
    test_size: int = Field(ge=1)
    chunk_size: int | None = Field(default=None, ge=1)
    grad_clip: float = Field(gt=0)
    #: a run stops after the first epoch whose test accuracy reaches this (None: every epoch runs)
    target_accuracy: float | None = Field(default=None, gt=0, le=1)
    device: str
    #: fp32 matmul/cuDNN precision of training on CUDA (``--tf32``): default (PyTorch's), on or off
    tf32: Literal["default", "on", "off"] = "default"
    quick: bool = False
    #: per-task replacements of ``epochs`` / ``batch_size`` / ``train_size`` (the quick suite's recall tasks)
    task_settings: dict[str, dict[str, int]] = Field(default_factory=dict)
    #: per-task generator options (e.g. the quick suite's MQAR ``vocab_size``)
    task_options: dict[str, dict[str, int]] = Field(default_factory=dict)

    def for_task(self, task: str) -> EvalSettings:
        """These settings with ``task``'s entries of ``task_settings`` applied."""
        return self.model_copy(update=self.task_settings.get(task, {}))


class Curves(_Strict):
    """Learning curves: train loss per optimizer step, test accuracy after each epoch."""

    step: list[int]
    train_loss: list[float]
    epoch: list[int]
    test_accuracy: list[float]


class RunResult(_Strict):
    """One trained model: ``stack`` on ``task`` at ``length`` (``options`` are the generator's settings)."""

    stack: str
    task: str
    length: int = Field(ge=1)
    options: dict[str, float]
    d_hidden: int = Field(ge=1)
    #: accuracy of a uniform guess among the answers the task can score (e.g. 1 / #values for MQAR)
    chance: float = Field(gt=0, le=1)
    #: state elements one sequence carries, summed over layers (the KV cache at ``length`` for the transformer)
    state_floats: int = Field(ge=0)
    test_accuracy: float = Field(ge=0, le=1)
    test_loss: float
    final_loss: float
    params: int = Field(ge=0)
    train_time_s: float = Field(ge=0)
    tokens_per_s: float = Field(ge=0)
    step_seq_max_abs_err: float | None = None
    step_check: Literal["step", "prefix"]
    chunk_size: int | None = None
    steps: int = Field(ge=0)
    #: the ``--tf32`` mode this run trained under (each run says it: a resumed sweep may mix them)
    tf32: Literal["default", "on", "off"] = "default"
    #: accuracy on named slices of the test set, e.g. ``{"depth 0.0-0.2": 1.0}`` for needle
    slices: dict[str, float] = Field(default_factory=dict)
    curves: Curves

    @property
    def key(self) -> tuple[str, str, int, tuple, int]:
        return self.stack, self.task, self.length, tuple(sorted(self.options.items())), self.d_hidden


class SkippedStack(_Strict):
    stack: str
    reason: str


class EvalResults(_Strict):
    """Top level of ``results.json``."""

    schema_version: Literal[2] = SCHEMA_VERSION
    created: str
    cortexmem_version: str
    torch_version: str
    device: str
    world_size: int = Field(ge=1)
    wall_time_s: float = Field(ge=0)
    settings: EvalSettings
    runs: list[RunResult]
    skipped: list[SkippedStack] = Field(default_factory=list)
