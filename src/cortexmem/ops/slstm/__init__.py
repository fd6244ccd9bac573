from .naive import slstm_naive, slstm_pointwise

__all__ = ["slstm_naive", "slstm_pointwise"]
