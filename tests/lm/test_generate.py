from __future__ import annotations

import pytest
import torch

from cortexmem.lm.generate import filter_logits, generate_ids
from cortexmem.lm.model import CortexLM, LMConfig


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))
    k2 = filter_logits(logits, top_k=2)
    assert torch.isfinite(k2).tolist() == [True, True, False, False, False]
    p = filter_logits(logits, top_p=0.8)  # 0.5 + 0.2 < 0.8 <= 0.5 + 0.2 + 0.15
    assert torch.isfinite(p).tolist() == [True, True, True, False, False]
    assert torch.isfinite(filter_logits(logits, top_p=0.4)).tolist() == [True, False, False, False, False]
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 0"):
        filter_logits(logits, top_p=0.0)


def test_sampling_is_reproducible_and_respects_length():
    torch.manual_seed(0)
    model = CortexLM(LMConfig(vocab_size=30, dim=16, n_heads=2, max_seq_len=8, mem_key_dim=8)).eval()
    gen = lambda s: generate_ids(  # noqa: E731
        model, [1, 2, 3], max_new_tokens=12, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(s)
    )
    a, b = gen(3), gen(3)
    assert a == b and len(a) == 12 and all(0 <= t < 30 for t in a)  # windows past max_seq_len are cropped
    assert model.get_stats()["clock"] == 24
    with pytest.raises(ValueError, match="temperature must be >= 0, got -1"):
        generate_ids(model, [1], temperature=-1)
