"""Our code reads nothing back to the host per chunk of a forward over many chunks (each read is a GPU sync).

A sync per chunk stops the CPU from queueing the next chunk's base layers while the GPU works: with a launch-bound
base that likely doubled the full forward's time on an H200 (the gated-delta op's ``g <= 0`` check). On CPU the
reads made from ``cortexmem`` code are counted by patching the Tensor methods that return host values (the base
model's own reads, e.g. transformers' packed-sequence check, are the same with and without the memory).
"""

import sys

import pytest
import torch

from cortexmem.llm import attach_memory

from .helpers import open_gates, small_memory, tiny_base

_READS = ("item", "tolist", "__bool__", "__int__", "__float__")


class _HostReads:
    def __init__(self, monkeypatch) -> None:
        self.n = 0
        for name in _READS:
            orig = getattr(torch.Tensor, name)

            def counted(t, *a, _orig=orig, **kw):
                caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
                self.n += "/cortexmem/" in caller
                return _orig(t, *a, **kw)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("cfg", [dict(read_from="embeddings", layers=[-1], conv_kernel=4, gate_context=3,
                                      gate_context_hidden=8), dict(read_from="residual", layers=[0])])
def test_host_reads_do_not_grow_with_chunks(monkeypatch, cfg):
    torch.manual_seed(0)
    mlm = attach_memory(tiny_base("llama"), small_memory(8, **cfg))
    open_gates(mlm)
    C = mlm.config.chunk_size
    counts = {}
    for n_chunks in (2, 6):
        ids = torch.randint(3, 60, (2, n_chunks * C))
        mlm(ids, return_logits=False, fast_unscored=False)  # warm-up: lazy one-time work is not per chunk
        reads = _HostReads(monkeypatch)
        with torch.no_grad():
            mlm(ids, labels=ids, return_logits=False, fast_unscored=False)
            mlm.ingest(ids, state=mlm.init_state(2))
        counts[n_chunks] = reads.n
        monkeypatch.undo()
    assert counts[6] == counts[2], counts
