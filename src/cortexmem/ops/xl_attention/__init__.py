from .naive import xl_attention_naive
from .parallel import xl_attention

__all__ = ["xl_attention", "xl_attention_naive"]
