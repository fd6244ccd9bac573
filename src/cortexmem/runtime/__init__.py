"""Runtime wrappers of any :class:`~cortexmem.core.module.MemoryModule`: CUDA-graph capture of a training call
(``graphed``) or of ``step`` (``step_runner``), the non-finite check (``finite``), and the fp32 precision of a
block of work (``precision``)."""
