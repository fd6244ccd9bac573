from .chunk import mlstm_chunkwise
from .naive import mlstm_naive

__all__ = ["mlstm_chunkwise", "mlstm_naive"]
