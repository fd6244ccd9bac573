"""Tiny transformers models and sidecar configs for the llm tests."""

from __future__ import annotations

import torch

from cortexmem.llm import MemoryConfig

VOCAB = 96


def tiny_base(arch: str = "qwen2", *, seed: int = 0, vocab: int = VOCAB, hidden: int = 32):
    """A 2-layer causal LM built from a transformers config (no download)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    if arch == "qwen2":
        cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2)
        model = Qwen2ForCausalLM(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2)
        model = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=2, n_head=4, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    return model.eval()


def small_memory(chunk_size: int = 8, **kw) -> MemoryConfig:
    """Gated-delta memory at toy size (the ``residual`` preset: mid-layer residual read, zero output gate)."""
    base = dict(use_hybrid=False, num_heads=2, head_dim=8, memory_chunk=8, chunk_size=chunk_size, compressor="none")
    base.update(kw)
    return MemoryConfig.preset("residual", **base)


def open_gates(mlm, value: float = 0.5) -> None:
    """Make the memory matter (the gate is zero at init)."""
    with torch.no_grad():
        for a in mlm.memory.adapters.values():
            a.gate.fill_(value)
