from __future__ import annotations

import pytest
import torch

from cortexmem.lm.data import demo_corpus, prepare, write_demo_data
from cortexmem.lm.tokenizer import train_bpe


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """Demo corpus + BPE tokenizer + prepared train/val token files (shared by the lm tests)."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("lm_demo")
    write_demo_data(d / "demo.jsonl", n_docs=1500, seed=0)
    tok = train_bpe(demo_corpus(1500, seed=0), 512)
    tok.save(d / "tok")
    prepare(d / "demo.jsonl", d / "train.bin", tok, val_fraction=0.05, seed=0)
    return d
