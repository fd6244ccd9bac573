"""Core machinery shared by every level: tagged configs, registries, state helpers, atomic I/O."""
