from .naive import causal_conv1d_naive
from .parallel import causal_conv1d

__all__ = ["causal_conv1d", "causal_conv1d_naive"]
