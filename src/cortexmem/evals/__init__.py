"""Synthetic memory evaluation suite (``cortex eval``): tasks, named stacks, training, reports."""

from .models import CausalTransformer, EvalModel, step_vs_sequence_error
from .schema import EvalResults, EvalSettings, RunResult
from .stacks import available_stacks, build_stack, list_stacks, register_stack
from .tasks import MQAR_SLICES, TASKS, TaskData, TaskSpec, make_task

__all__ = [
    "CausalTransformer", "EvalModel", "step_vs_sequence_error",
    "EvalResults", "EvalSettings", "RunResult",
    "available_stacks", "build_stack", "list_stacks", "register_stack",
    "MQAR_SLICES", "TASKS", "TaskData", "TaskSpec", "make_task",
]
