"""fp32 matmul / cuDNN precision for a block of work (``cortex bench --tf32``, and ``cortex doctor``'s fp32 rows)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

TF32_MODES = ("default", "on", "off")


@contextlib.contextmanager
def tf32_mode(mode: str) -> Iterator[dict[str, bool]]:
    """fp32 matmul/conv precision for a run: ``default`` keeps PyTorch's (matmuls full fp32, cuDNN in TF32: the
    cuDNN LSTM peer then runs its GEMMs in TF32 and ours do not), ``on`` gives every row TF32, ``off`` none.
    Yields the settings in force; restores the previous ones on exit."""
    if mode not in TF32_MODES:
        raise ValueError(f"tf32 must be one of {TF32_MODES}, got {mode!r}")
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        if mode != "default":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "on"
        yield {"matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
