"""Our code reads nothing back to the host per chunk of a forward over many chunks (each read is a GPU sync).

A sync per chunk stops the CPU from queueing the next chunk's base layers while the GPU works: with a launch-bound
base that likely doubled the full forward's time on an H200 (the gated-delta op's ``g <= 0`` check). On CPU the
reads made from ``cortexmem`` code are counted by patching the Tensor methods that return host values (the base
model's own reads, e.g. transformers' packed-sequence check, are the same with and without the memory).
"""

import pytest
import torch

from cortexmem.llm import attach_memory

from .helpers import open_gates, small_memory, tiny_base


@pytest.mark.parametrize("cfg", [dict(read_from="embeddings", layers=[-1], conv_kernel=4, gate_context=3,
                                      gate_context_hidden=8), dict(read_from="residual", layers=[0])])
def test_host_reads_do_not_grow_with_chunks(host_reads, cfg):
    torch.manual_seed(0)
    mlm = attach_memory(tiny_base("llama"), small_memory(8, **cfg))
    open_gates(mlm)
    C = mlm.config.chunk_size
    counts = {}
    for n_chunks in (2, 6):
        ids = torch.randint(3, 60, (2, n_chunks * C))
        mlm(ids, return_logits=False, fast_unscored=False)  # warm-up: lazy one-time work is not per chunk
        host_reads.clear()
        with torch.no_grad():
            mlm(ids, labels=ids, return_logits=False, fast_unscored=False)
            mlm.ingest(ids, state=mlm.init_state(2))
        counts[n_chunks] = len(host_reads)
    assert counts[6] == counts[2], counts
