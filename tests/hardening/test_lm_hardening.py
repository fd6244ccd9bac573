"""LM data prep and checkpoints: fuzzed JSONL, fuzzed checkpoint names, SIGKILL while a checkpoint is written."""

from __future__ import annotations

import json
import multiprocessing
import random
import time

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cortexmem.lm.data import prepare, val_path_for
from cortexmem.lm.model import load_pretrained
from cortexmem.lm.tokenizer import ByteTokenizer
from cortexmem.lm.train import TrainConfig, Trainer
from cortexmem.utils.paths import safe_name

TOK = ByteTokenizer()


@st.composite
def jsonl_lines(draw):
    """``(raw line, text or None)``: None marks a line that must be reported as bad."""
    kind = draw(st.sampled_from(["ok", "ok", "empty", "huge", "bad_json", "not_utf8", "wrong_type", "list",
                                 "missing", "surrogate", "blank", "nested"]))
    if kind == "ok":
        text = draw(st.text(max_size=40))
        return json.dumps({"text": text, "id": 1}, ensure_ascii=draw(st.booleans())).encode(), text
    if kind == "empty":
        return b'{"text": ""}', ""
    if kind == "huge":
        text = "ab\u00e9" * draw(st.integers(1000, 20000))
        return json.dumps({"text": text}, ensure_ascii=False).encode(), text
    if kind == "bad_json":
        bad = [b'{"text": "x"', b"{text: 1}", b"nul", b'{"text": "a"}}', b"\xef\xbb\xbf{}"]
        return draw(st.sampled_from(bad)), None
    if kind == "not_utf8":
        return b'{"text": "' + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80abc"])) + b'"}', None
    if kind == "wrong_type":
        value = draw(st.one_of(st.integers(), st.none(), st.booleans(), st.lists(st.text(max_size=3), max_size=2),
                               st.floats(allow_nan=False)))
        return json.dumps({"text": value}).encode(), None
    if kind == "list":
        return b'["text", "x"]', None
    if kind == "missing":
        return b'{"body": "x"}', None
    if kind == "surrogate":
        return b'{"text": "a\\ud800b"}', None
    if kind == "nested":
        return b'{"text": {"text": "x"}}', None
    return draw(st.sampled_from([b"", b"   ", b"\t", b"\r"])), "blank"


@pytest.mark.fuzz
@given(lines=st.lists(jsonl_lines(), max_size=12), crlf=st.booleans(), final_newline=st.booleans())
def test_fuzz_prepare_skips_bad_lines_with_line_numbers(tmp_path_factory, lines, crlf, final_newline):
    d = tmp_path_factory.mktemp("prep")
    end = b"\r\n" if crlf else b"\n"
    raw = end.join(line for line, _ in lines) + (end if final_newline and lines else b"")
    (d / "in.jsonl").write_bytes(raw)
    good = [text for _, text in lines if text is not None and text != "blank"]
    if not good:  # an input without one document is an error naming it, and nothing is written
        with pytest.raises(ValueError, match="in.jsonl"):
            prepare(d / "in.jsonl", d / "out.bin", TOK, val_fraction=0.0)
        assert sorted(p.name for p in d.iterdir()) == ["in.jsonl"]
        return
    report = prepare(d / "in.jsonl", d / "out.bin", TOK, val_fraction=0.0)
    expected_bad = [i for i, (_, text) in enumerate(lines, start=1) if text is None]
    assert [n for n, _ in report.bad_lines] == expected_bad
    assert all(reason for _, reason in report.bad_lines)
    assert report.docs == len(good)
    tokens = np.fromfile(d / "out.bin", dtype=np.uint16)
    want = [t for text in good for t in (*TOK.encode(text), TOK.eos_id)]
    assert tokens.tolist() == want and report.train_tokens == len(want)
    assert json.loads((d / "out.bin.json").read_text())["tokens"] == len(want)
    assert val_path_for(d / "out.bin").is_file()


# --- checkpoints -----------------------------------------------------------------------------------------
def _trainer(tmp) -> Trainer:
    data = tmp / "train.bin"
    np.random.default_rng(0).integers(0, TOK.vocab_size, 400).astype(np.uint16).tofile(data)
    (tmp / "train.bin.json").write_text(json.dumps({"dtype": "uint16", "tokens": 400, "vocab_size": TOK.vocab_size,
                                                    "eos_id": TOK.eos_id}))
    cfg = TrainConfig(train_data=str(data), checkpoint_dir=str(tmp / "ckpt"), dim=8, n_layers=1, n_heads=1,
                      seq_len=4, batch_size=2, max_steps=2, stm_capacity=4, ltm_capacity=8)
    return Trainer(cfg, device="cpu")


_TRAINER: list[Trainer] = []
NAMES = st.one_of(st.sampled_from(["last", "best", "epoch_3", "../last", "/tmp/x", "a/b", "..", ".last", "a\x00",
                                   "", "x" * 201, "ok.v2", 5, None]), st.text(max_size=10))


@pytest.mark.fuzz
@given(name=NAMES)
def test_fuzz_checkpoint_names_stay_inside(tmp_path_factory, name):
    if not _TRAINER:
        _TRAINER.append(_trainer(tmp_path_factory.mktemp("lm")))
    tr = _TRAINER[0]
    root = tr.cfg.checkpoint_dir
    try:
        safe_name(name)
        valid = True
    except (TypeError, ValueError):
        valid = False
    try:
        path = tr.save_checkpoint(name)
    except (TypeError, ValueError) as e:
        assert not valid and "checkpoint name" in str(e)
        return
    assert valid and str(path.parent) == root and path.name == name
    assert (path / "trainer.json").is_file() and (path / "model.safetensors").is_file()
    assert path.resolve().parent == path.parent.resolve()


KILLS = 30


def _ckpt_writer(tr: Trainer, log: str, start: int) -> None:
    torch.set_num_threads(1)
    v = start
    with open(log, "a") as f:
        while True:
            v += 1
            with torch.no_grad():
                for p in tr.model.parameters():
                    p.fill_(float(v))
            tr.step = v
            tr.save_checkpoint("last")
            f.write(f"{v}\n")
            f.flush()


def test_sigkill_during_lm_checkpoint_writes_never_loses_a_commit(tmp_path):
    tr = _trainer(tmp_path)
    last, log = tmp_path / "ckpt" / "last", tmp_path / "log"
    log.write_text("")
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(1)
    for _ in range(KILLS):
        logged = [int(x) for x in log.read_text().split()]
        proc = ctx.Process(target=_ckpt_writer, args=(tr, str(log), (max(logged) + 1) if logged else 0))
        proc.start()
        time.sleep(rng.uniform(0.02, 0.3))
        proc.kill()  # SIGKILL at a random point, often inside save_checkpoint()
        proc.join()
        committed = [int(x) for x in log.read_text().split()]
        if not last.exists():
            assert not committed
            continue
        step = json.loads((last / "trainer.json").read_text())["step"]
        assert not committed or step >= committed[-1], f"committed step {committed[-1]}, checkpoint has {step}"
        model = load_pretrained(last)
        assert all(torch.all(p == float(step)) for p in model.parameters()), "checkpoint mixes two versions"
        resumed = Trainer(tr.cfg, resume=last, device="cpu")
        assert resumed.step == step
        hidden = [p.name for p in last.parent.iterdir() if p.name.startswith(".")]
        assert len(hidden) <= 3, hidden  # the live one plus at most one crashed writer's leftovers
    n = len(log.read_text().split())
    print(f"LM checkpoints: {KILLS} kill points, {n} committed checkpoints, 0 lost")
    assert n >= 5, "the writer hardly committed anything: kills came too early"
