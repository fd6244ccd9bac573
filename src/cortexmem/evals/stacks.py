"""The eval suite's stacks: the shared named stacks (:mod:`cortexmem.stacks.named`) plus ``transformer``.

``register_stack(name, builder)``, ``builder(d_hidden) -> MemoryModule``, adds a stack for every app.
"""

from __future__ import annotations

from ..stacks.named import (
    DEFAULT_D_HIDDEN,
    StackEntry,
    available_stacks,
    build_stack,
    list_stacks,
    register_stack,
    stack_status,
)

#: stacks of the quick suite (``cortex eval`` with no arguments), in order; missing ones are skipped
QUICK_STACKS: tuple[str, ...] = ("lstm", "mlstm", "axon", "transformer")


def _transformer(d: int):
    from .models import CausalTransformer

    return CausalTransformer(d, n_layers=2, n_heads=4 if d % 4 == 0 else 1)


register_stack("transformer", _transformer,
               "2 x (short conv, rotary causal attention, MLP) over the full context (non-recurrent)")

__all__ = ["DEFAULT_D_HIDDEN", "QUICK_STACKS", "StackEntry", "available_stacks", "build_stack", "list_stacks",
           "register_stack", "stack_status"]
