"""Tools on top of the whole library: ``cortex doctor`` and ``cortex bench``."""
