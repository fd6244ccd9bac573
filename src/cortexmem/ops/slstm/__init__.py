from .naive import slstm_naive, slstm_pointwise
from .scan import slstm_scan

__all__ = ["slstm_naive", "slstm_pointwise", "slstm_scan"]
