"""Learning while running: a fact taught with ``learn`` is produced afterwards, without a training run."""

from __future__ import annotations

import copy

import pytest
import torch

from cortexmem.lm.data import val_path_for
from cortexmem.lm.generate import generate
from cortexmem.lm.model import load_pretrained
from cortexmem.lm.train import TrainConfig, Trainer

FACTS = {"The capital of Zorbia is": " Quxi", "The capital of Vantor is": " Teslin"}


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    torch.set_num_threads(1)
    cfg = TrainConfig(
        train_data=str(demo_dir / "train.bin"),
        val_data=str(val_path_for(demo_dir / "train.bin")),
        tokenizer=str(demo_dir / "tok"),
        checkpoint_dir=str(tmp_path_factory.mktemp("ck")),
        dim=64,
        n_layers=2,
        n_heads=4,
        seq_len=48,
        batch_size=16,
        max_steps=200,
        lr=3e-3,
        eval_batches=4,
        save_every=10_000,
    )
    tr = Trainer(cfg, device="cpu")
    hist = tr.fit()
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    tr.model.eval()
    return tr.model


def test_fact_is_produced_only_after_learn(trained, tmp_path):
    model = copy.deepcopy(trained)
    before = {p: generate(model, p, max_new_tokens=5) for p in FACTS}
    for prompt, answer in FACTS.items():
        assert answer.strip() not in before[prompt], before
    for prompt, answer in FACTS.items():
        model.learn(prompt + answer + ".")
    after = {p: generate(model, p, max_new_tokens=5) for p in FACTS}
    for prompt, answer in FACTS.items():
        assert after[prompt].startswith(answer), (before, after)
    stats = model.get_stats()
    assert stats["stm"]["size"] > 0 and stats["stm"]["hits"] > 0 and stats["hit_rate"] > 0
    # an unrelated prompt is not hijacked by the new entries
    assert "Quxi" not in generate(model, "The river of Zorbia is the", max_new_tokens=5)
    # the memory persists with the checkpoint
    model.save_pretrained(tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert generate(loaded, "The capital of Zorbia is", max_new_tokens=5).startswith(" Quxi")


def test_fact_survives_consolidation_into_ltm(trained):
    model = copy.deepcopy(trained)
    model.learn("The capital of Zorbia is Quxi.")
    for _ in range(3):
        generate(model, "The capital of Zorbia is", max_new_tokens=4)
    model.memory.consolidate()
    stats = model.get_stats()
    assert stats["ltm"]["size"] >= 3 and stats["consolidated"] >= 3
    model.memory.stm.ids[:] = -1  # forget everything still in STM: the answer must come from LTM (FAISS)
    assert generate(model, "The capital of Zorbia is", max_new_tokens=4).startswith(" Quxi")
    assert model.get_stats()["ltm"]["hits"] > 0


def test_fast_weight_steps_fit_the_fact(trained):
    model = copy.deepcopy(trained)
    out = model.learn("The capital of Zorbia is Quxi.", fast_steps=5)
    assert out["written"] > 0 and out["fast_losses"][-1] < out["fast_losses"][0]
    assert model.get_stats()["fast_weight_norm"] > 0
