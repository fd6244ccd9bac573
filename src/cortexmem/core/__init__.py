"""The contract: :class:`~cortexmem.core.module.MemoryModule`, tagged configs and the cell/block registry."""
