from __future__ import annotations

import importlib.util
import pickle

import pytest
import torch

from cortexmem.blocks.standard import PassThroughBlockConfig
from cortexmem.cells.lstm import LSTMCellConfig
from cortexmem.lm.data import val_path_for
from cortexmem.lm.model import CortexLM, LMConfig, load_pretrained
from cortexmem.lm.train import TrainConfig, Trainer


def _cfg(demo_dir, ckpt, **kw) -> TrainConfig:
    base = dict(
        train_data=str(demo_dir / "train.bin"),
        val_data=str(val_path_for(demo_dir / "train.bin")),
        tokenizer=str(demo_dir / "tok"),
        checkpoint_dir=str(ckpt),
        dim=32,
        n_layers=1,
        n_heads=2,
        seq_len=16,
        batch_size=4,
        max_steps=8,
        warmup_ratio=0.25,
        eval_batches=2,
        save_every=1000,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_resume_is_bit_exact(demo_dir, tmp_path):
    full = Trainer(_cfg(demo_dir, tmp_path / "a"), device="cpu")
    full_hist = full.fit()
    half = Trainer(_cfg(demo_dir, tmp_path / "b"), device="cpu")
    half.fit(until=4)
    assert half.step == 4
    resumed = Trainer(_cfg(demo_dir, tmp_path / "b"), resume=tmp_path / "b" / "last", device="cpu")
    assert resumed.step == 4
    hist = resumed.fit()
    assert [h["loss"] for h in hist] == [h["loss"] for h in full_hist]
    assert [h["lr"] for h in hist] == [h["lr"] for h in full_hist]
    for (name, a), (_, b) in zip(
        full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    sa, sb = full.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    for pid in sa:
        for key in sa[pid]:
            assert torch.equal(torch.as_tensor(sa[pid][key]), torch.as_tensor(sb[pid][key])), (pid, key)


def test_checkpoints_load_without_pickle(demo_dir, tmp_path, monkeypatch):
    tr = Trainer(_cfg(demo_dir, tmp_path, max_steps=2), device="cpu")
    tr.fit()
    tr.model.learn([5, 6, 7, 8])
    tr.save_checkpoint("last")
    names = {p.name for p in (tmp_path / "last").rglob("*") if p.is_file()}
    assert {
        "model.safetensors",
        "model.json",
        "train_state.safetensors",
        "trainer.json",
        "memory.json",
        "memory.safetensors",
        "tokenizer.json",
    } <= names
    assert all(n.endswith((".json", ".safetensors")) for n in names)
    assert (tmp_path / "best" / "trainer.json").is_file()  # end of training evaluates and keeps the best

    def refuse(*a, **k):
        raise AssertionError("pickle used while loading a checkpoint")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model = load_pretrained(tmp_path / "last")
    assert model.get_stats()["stm"]["size"] == 3
    again = Trainer(_cfg(demo_dir, tmp_path, max_steps=2), resume=tmp_path / "last", device="cpu")
    assert again.step == 2


def test_loss_spike_rolls_back_to_snapshot(demo_dir, tmp_path):
    tr = Trainer(_cfg(demo_dir, tmp_path, max_steps=12, spike_warmup=3, snapshot_every=2), device="cpu")
    tr.fit(until=4)
    good = {k: v.clone() for k, v in tr.model.state_dict().items()}
    with torch.no_grad():
        tr.model.embed.weight.mul_(300.0)  # a corrupted update
    rec = tr.train_step()
    assert rec.get("rollback") and tr.rollbacks == 1
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v, good[k]), k
    rec = tr.train_step()
    assert "rollback" not in rec and rec["loss"] < 3 * tr.guard.mean


def test_lr_warmup_then_cosine(demo_dir, tmp_path):
    tr = Trainer(
        _cfg(demo_dir, tmp_path, max_steps=100, warmup_ratio=0.1, lr=1e-3, min_lr_ratio=0.1), device="cpu"
    )
    lrs = [tr.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_flag_gives_clear_error_without_the_package(demo_dir, tmp_path):
    with pytest.raises(ImportError, match="pip install wandb"):
        Trainer(_cfg(demo_dir, tmp_path, wandb=True), device="cpu")


def test_cortex_block_interleaved_core_is_causal_and_trains():
    torch.manual_seed(0)
    cfg = LMConfig(
        vocab_size=40,
        dim=16,
        n_layers=2,
        n_heads=2,
        max_seq_len=16,
        mem_key_dim=8,
        cortex_blocks=[PassThroughBlockConfig(cell=LSTMCellConfig())],
        cortex_every=1,
    )
    model = CortexLM(cfg)
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == ["TransformerLayer", "PassThroughBlock", "TransformerLayer"]
    x = torch.randint(0, 40, (3, 13))
    _, loss = model(x, torch.randint(0, 40, (3, 13)))
    loss.backward()
    assert model.layers[1].cell.lstm.weight_ih_l0.grad.abs().sum() > 0
    x2 = x.clone()
    x2[:, 9] = (x2[:, 9] + 1) % 40
    with torch.no_grad():
        a, b = model.head(model.hidden(x)), model.head(model.hidden(x2))
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_bad_model_inputs():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        LMConfig(vocab_size=10, dim=30, n_heads=4)
    model = CortexLM(LMConfig(vocab_size=10, dim=16, n_heads=2, max_seq_len=8, mem_key_dim=8))
    with pytest.raises(ValueError, match=r"exceeds max_seq_len 8"):
        model.hidden(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"integer tensor \[B, T\]"):
        model.hidden(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        model.learn([3])


@pytest.mark.gpu
def test_amp_training_and_memory_read_on_gpu(demo_dir, tmp_path):
    tr = Trainer(_cfg(demo_dir, tmp_path, max_steps=3), device="cuda")
    hist = tr.fit()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    model = load_pretrained(tmp_path / "last", map_location="cuda")
    model.learn([5, 6, 7, 8])
    logits, gate = model.next_logits([5, 6, 7])
    assert logits.is_cuda and torch.isfinite(logits).all() and 0.0 <= gate <= 1.0
