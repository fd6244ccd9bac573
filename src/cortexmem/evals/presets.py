"""Per-task training defaults and named presets (``cortex eval --preset NAME [--quick]``)."""

from __future__ import annotations

from dataclasses import dataclass

#: training defaults of every task (``--epochs``, ``--batch-size``, ``--train-size``, ``--test-size``)
DEFAULT_TRAINING: dict[str, int] = {"epochs": 6, "batch_size": 32, "train_size": 1024, "test_size": 256}
#: ``--lr`` where neither the flag nor a preset sets it
DEFAULT_LR = 3e-3
#: per-task training where a flag is not given. The recall tasks score few positions per sequence (needle
#: one, MQAR ``pairs``) and must learn to bind keys to values: at the default 192 steps over 1024 sequences
#: every recurrent stack stays at chance, so both get 1024 steps; needle learns with half batches (cheaper).
TASK_TRAINING: dict[str, dict[str, int]] = {
    "mqar": {"epochs": 4, "batch_size": 32, "train_size": 8192},
    "needle": {"epochs": 4, "batch_size": 16, "train_size": 4096},
}
#: generator options at a task's default length: MQAR at 64 tokens with the smallest vocabulary Zoology's
#: constraint ``V > L`` allows (keys 1..32, values 33..65) instead of 128, halving the key/value sets to learn
TASK_OPTIONS: dict[str, dict[str, int]] = {"mqar": {"vocab_size": 66}}


@dataclass(frozen=True)
class Preset:
    """A sweep: MQAR ``slices`` x ``widths`` over ``stacks`` (None: every available stack)."""

    name: str
    description: str
    slices: tuple[tuple[int, int], ...]
    widths: tuple[int, ...]
    epochs: int
    batch_size: int
    train_size: int
    test_size: int
    stacks: tuple[str, ...] | None = None
    lr: float = DEFAULT_LR
    target_accuracy: float | None = None
    #: the ``--tf32`` mode when the flag is not given
    tf32: str = "default"


#: ``--preset zoology``: Zoology's accuracy-vs-state-size sweep over one stack of each memory family. Its budget
#: per run: 16 epochs over 51,200 sequences in batches of 256 (3,200 steps), lr 1e-3. On an H100 at MQAR 256:64,
#: d=128 the recurrent stacks leave chance only after 1,000 to 2,000 steps (gated_delta 0.989, hybrid_w32 0.999,
#: mlstm 0.957 at 2,400; gated_delta 0.999 at 3,200; all at chance after 1,200), and at lr 3e-3 they stay there
#: (docs/evals.md). A run stops at the first epoch whose test accuracy reaches 0.99 (solved: more steps would not
#: move its point on the figure): on the six stacks that solve MQAR 256:64 at d=128 it saves 54% of the steps.
#: Training runs with TF32 matmuls on CUDA (fp32 storage and accumulation, products with a 10-bit mantissa), so the
#: matmuls run on the tensor cores.
PRESETS: dict[str, Preset] = {
    "zoology": Preset("zoology", "MQAR 256:16, 256:64, 512:128 x d_hidden 64, 128, 256, one stack per family",
                      slices=((256, 16), (256, 64), (512, 128)), widths=(64, 128, 256), epochs=16, batch_size=256,
                      train_size=51200, test_size=1000, lr=1e-3, target_accuracy=0.99, tf32="on",
                      stacks=("transformer", "gated_delta", "hybrid", "hybrid_w32", "mlstm", "mlstm_qk1", "lstm",
                              "axon")),
}
#: ``--preset NAME --quick``: the same sweep shrunk to a CPU smoke (seconds per stack, accuracy meaningless)
QUICK_PRESETS: dict[str, Preset] = {
    "zoology": Preset("zoology", "CPU smoke of the zoology preset", slices=((32, 2),), widths=(8, 16), epochs=1,
                      batch_size=16, train_size=32, test_size=16, target_accuracy=0.99, tf32="on",
                      stacks=("transformer", "gated_delta", "hybrid", "hybrid_w32", "mlstm", "mlstm_qk1", "lstm",
                              "axon")),
}
#: flags a preset sets itself: combining them with ``--preset`` is an error
PRESET_FLAGS: tuple[str, ...] = ("--task", "--lengths", "--mqar-slices", "--d-hidden", "--chunk-size")
