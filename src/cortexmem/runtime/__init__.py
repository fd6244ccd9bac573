"""Runtime wrappers of any :class:`~cortexmem.core.module.MemoryModule`: CUDA-graph capture of a training call
(``graphed``) or of ``step`` (``step_runner``), and the non-finite check (``finite``)."""
