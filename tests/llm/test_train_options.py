"""train_niah options: plain-text no-harm loss (lm_tokens), write-gate L1, checkpointing off, validation."""

import random

import pytest
import torch
from typer.testing import CliRunner

from cortexmem.cli import app
from cortexmem.llm import CharTokenizer, TextNiah, TokenNiah, attach_memory
from cortexmem.llm.eval import eval_niah
from cortexmem.llm.pretrain import pretrain_document
from cortexmem.llm.train import TrainNiahConfig, filler_mask, plain_batch, train_niah

from .helpers import small_memory, tiny_base


def test_lm_tokens_write_l1_without_checkpoint_learn():
    """Needle in chunk 0, question in chunk 2; 100 steps (about 5 s on one core).

    Measured: answer loss 4.6 -> 2.0 (first vs last fifth of the steps), filler write gate 0.49 -> 0.02.
    """
    torch.manual_seed(0)
    base = tiny_base("llama", vocab=64)
    torch.nn.init.normal_(base.lm_head.weight, std=0.5)
    mlm = attach_memory(base, small_memory(8, num_heads=2, head_dim=16, layers=[1], read_from="embeddings",
                                           gate_context=4, gate_context_hidden=8))
    task = TokenNiah(64, n_keys=8, n_values=8, n_distractors=1)
    cfg = TrainNiahConfig(length=24, steps=100, batch_size=32, lr=2e-2, warmup=10, eval_every=1000, eval_samples=32,
                          save_every=1000, checkpoint=False, max_depth=0.0, lm_tokens=64, lm_weight=0.1,
                          write_l1=0.5)
    hist = train_niah(mlm, task, cfg, progress=False)
    fifth = len(hist.loss) // 5
    first, last = sum(hist.loss[:fifth]) / fifth, sum(hist.loss[-fifth:]) / fifth
    assert last < 0.7 * first
    assert hist.write_gate[-1] < hist.write_gate[0] / 4
    assert all(x == x for x in hist.lm_loss)  # the plain-text LM loss is computed every step


def test_checkpointed_step_matches_and_text_task_runs(tmp_path):
    torch.manual_seed(0)
    tok = CharTokenizer()
    task = TextNiah(tok, digits=2, n_distractors=1)
    grads = []
    for ckpt in (True, False):
        torch.manual_seed(0)
        mlm = attach_memory(tiny_base("gpt2", vocab=tok.vocab_size),
                            small_memory(32, read_from="embeddings", layers=[-1], gate_context=6))
        cfg = TrainNiahConfig(length=160, steps=1, batch_size=2, lr=0.0, warmup=1, eval_every=1, eval_samples=2,
                              save_every=1, checkpoint=ckpt, lm_tokens=48, lm_weight=0.5, lm_seq_len=24,
                              write_l1=1.0, write_l1_on="all")
        gate = mlm.memory.adapters["1"].gate
        gate.register_hook(lambda g: grads.append(g.clone()))
        hist = train_niah(mlm, task, cfg, tmp_path / str(ckpt), progress=False)
        assert len(hist.write_gate) == 1 and hist.write_gate[0] > 0
    torch.testing.assert_close(grads[0], grads[1])  # recomputation does not change the step


def test_filler_mask_and_plain_text():
    tok = CharTokenizer()
    task = TextNiah(tok, digits=3, n_distractors=2)
    ids, labels, samples = task.batch(random.Random(3), 2, 400, 0.5, "train")
    mask = filler_mask(ids, samples)
    needle = filler_mask(ids, samples, needle_only=True)
    for i, s in enumerate(samples):
        assert len(s.distractors) == 2
        text = tok.decode(ids[i])
        for start, n in [(s.needle_pos, s.needle_len), *s.distractors]:
            assert tok.decode(ids[i, start:start + n]).strip().startswith("The secret code of")
            assert not mask[i, start:start + n].any()
        assert needle[i].sum() == s.needle_len and mask[i].sum() == 400 - s.needle_len - sum(
            n for _, n in s.distractors)
        assert "secret code" in text
    plain = plain_batch(task, random.Random(0), 100, 48)
    assert plain.shape == (3, 48)
    assert "What is the secret code" not in tok.decode(plain[0])[:5]
    # the plain text is the pretraining distribution: the same generator as pretrain_document
    six = TextNiah(tok, digits=6)
    assert tok.decode(six.plain_text(random.Random(9), 300, "train")) == pretrain_document(random.Random(9), 300)
    tn = TokenNiah(64, n_keys=8, n_values=8, n_distractors=2)
    _, _, ts = tn.batch(random.Random(0), 3, 40, None, "train")
    assert all(len(s.distractors) == 2 and all(n == 4 for _, n in s.distractors) for s in ts)
    assert all(tn.fill0 <= t < 64 for t in tn.plain_text(random.Random(0), 50, "train"))


def test_eval_niah_reports_write_gates():
    tok = CharTokenizer()
    mlm = attach_memory(tiny_base("llama", vocab=tok.vocab_size),
                        small_memory(32, read_from="embeddings", layers=[-1], write_init=0.2))
    with torch.no_grad():
        mlm.memory.adapters["1"].cell.beta_proj.weight.zero_()  # b = write_init everywhere
    res = eval_niah(mlm, TextNiah(tok, digits=2, n_distractors=1), [160], [0.0, 1.0], samples=2, batch_size=4)
    assert res["write_gate_needle"][0] == pytest.approx(0.2, abs=1e-5)
    assert res["write_gate_rest"][0] == pytest.approx(0.2, abs=1e-5)


@pytest.mark.parametrize(("kw", "match"), [
    ({"lm_tokens": -1}, "lm_tokens"),
    ({"lm_tokens": 64, "lm_weight": 0.0}, "lm_weight"),
    ({"lm_tokens": 64, "lm_weight": 1.0, "lm_seq_len": 1}, "lm_seq_len"),
    ({"write_l1": -0.1}, "write_l1"),
    ({"write_l1": float("nan")}, "write_l1"),
    ({"write_l1_on": "needle"}, "write_l1_on"),
    ({"time_limit_s": 0.0}, "time_limit_s"),
    ({"write_l1_warmup": -3}, "write_l1_warmup"),
])
def test_train_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainNiahConfig(**kw)


def test_write_l1_needs_a_write_gate():
    from cortexmem.cells.lstm import LSTMCellConfig

    mlm = attach_memory(tiny_base("llama"), small_memory(8, cell=LSTMCellConfig(hidden_size=16)))
    with pytest.raises(ValueError, match="write gate"):
        train_niah(mlm, TokenNiah(96), TrainNiahConfig(length=24, steps=1, write_l1=0.1), progress=False)


@pytest.mark.parametrize("args", [["--write-l1", "-1"], ["--lm-tokens", "-5"], ["--write-l1-on", "x"],
                                  ["--write-l1-warmup", "-1"], ["--gate-context", "-2"],
                                  ["--lm-tokens", "64", "--lm-weight", "0"], ["--memory-backend", "cuda_magic"]])
def test_cli_rejects_bad_flags_before_loading(tmp_path, args):
    res = CliRunner().invoke(app, ["llm", "train-niah", "--base", str(tmp_path / "missing"), "--out",
                                   str(tmp_path / "run"), "--device", "cpu", *args])
    assert res.exit_code == 2, res.output


@pytest.mark.parametrize("use_hybrid", [False, True])
def test_memory_backend_reaches_the_cell_and_bad_ones_fail_at_attach(use_hybrid):
    cfg = small_memory(8, use_hybrid=use_hybrid, memory_backend="torch")
    assert cfg.cell_config().backend == "torch"
    mlm = attach_memory(tiny_base("llama"), cfg)
    ids = torch.randint(3, 90, (1, 20))
    out = mlm(ids, labels=ids)
    out.loss.backward()  # the torch backend trains
    assert [a.cell.backend for a in mlm.memory.adapters.values()] == ["torch"] * len(mlm.memory.adapters)
    with pytest.raises(ValueError, match="unknown backend 'cuda_magic'"):
        attach_memory(tiny_base("llama"), small_memory(8, use_hybrid=use_hybrid, memory_backend="cuda_magic"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'triton_autograd' was requested but cannot run here"):
            attach_memory(tiny_base("llama"), small_memory(8, use_hybrid=use_hybrid, memory_backend="triton_autograd"))
