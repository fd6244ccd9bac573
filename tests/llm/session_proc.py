"""Run in a subprocess by test_sessions: continue a session and write the results (safetensors)."""

from __future__ import annotations

import sys

import torch


def main() -> None:
    store, part, out = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    from cortexmem.llm import attach_memory
    from cortexmem.utils.io import atomic_save_safetensors
    from tests.llm.helpers import open_gates, small_memory, tiny_base

    mlm = attach_memory(tiny_base("qwen2"), small_memory(8), sessions=store)
    open_gates(mlm, 1.0)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 96, (1, 40), generator=g)
    if part == "1":
        mlm.ingest(ids[:, :24], session_id="conv")
        atomic_save_safetensors(out, {"done": torch.ones(1)})
        return
    seq = mlm.generate(ids[:, 24:], session_id="conv", max_new_tokens=5, do_sample=False)
    state = mlm.session_state("conv").flatten_keys(".")
    atomic_save_safetensors(out, {"seq": seq, **{f"state.{k}": v for k, v in state.items()}})


if __name__ == "__main__":
    main()
