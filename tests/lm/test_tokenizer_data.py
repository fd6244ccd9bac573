from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from cortexmem.lm.data import RESERVED_NAMES, TokenData, demo_corpus, prepare, token_dtype, val_path_for
from cortexmem.lm.tokenizer import ByteTokenizer, load_tokenizer, train_bpe

KO = [
    "안녕하세요, 반갑습니다.",
    "서울은 한국의 수도입니다.",
    "오늘 날씨가 정말 좋네요!",
    "기억은 오래 남는다.",
]
EN = ["Hello there, nice to meet you.", "The capital of Korea is Seoul.", "Memory that learns while it runs."]


def test_bpe_round_trips_english_and_korean(tmp_path):
    tok = train_bpe((KO + EN) * 20, 320)
    assert tok.vocab_size <= 320
    for text in KO + EN + ["섞인 mixed 텍스트 ✓ 😀", "unseen 단어들 zebra"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    # merges were learned on Korean too: fewer tokens than UTF-8 bytes
    assert len(tok.encode(KO[1])) < len(KO[1].encode("utf-8"))
    tok.save(tmp_path / "t")
    again = load_tokenizer(tmp_path / "t")
    assert again.encode(KO[0] + EN[0]) == tok.encode(KO[0] + EN[0])
    assert (again.pad_id, again.bos_id, again.eos_id) == (tok.pad_id, tok.bos_id, tok.eos_id)


def test_byte_fallback_round_trips_and_bad_input():
    tok = ByteTokenizer()
    for text in KO + EN:
        assert tok.decode(tok.encode(text)) == text
    assert tok.eos_id == 258 and load_tokenizer(None).vocab_size == 259
    with pytest.raises(TypeError, match="encode expects str, got int"):
        tok.encode(5)
    with pytest.raises(ValueError, match="vocab_size must be >= 259"):
        train_bpe(EN, 100)


def test_demo_corpus_is_mostly_capital_facts_without_reserved_names():
    docs = demo_corpus(300)
    sentences = [s for d in docs for s in d.split(". ")]
    capitals = [s for s in sentences if s.startswith("The capital of")]
    assert len(capitals) > 0.5 * len(sentences) and len(capitals) > 500
    text = " ".join(docs)
    assert not any(name in text for name in RESERVED_NAMES)


def test_prepare_reports_bad_lines_with_numbers_and_skips_them(tmp_path, caplog):
    src = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"text": "first good line"}),
        "{not json",
        json.dumps({"text": 3}),
        "",
        json.dumps(["a list"]),
        json.dumps({"text": "안녕 second good"}),
    ]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = ByteTokenizer()
    with caplog.at_level(logging.WARNING):
        rep = prepare(src, tmp_path / "train.bin", tok, val_fraction=0.0)
    assert [n for n, _ in rep.bad_lines] == [2, 3, 5]
    assert "invalid JSON" in rep.bad_lines[0][1] and "'text' must be a string, got int" in rep.bad_lines[1][1]
    assert "in.jsonl:2" in caplog.text
    assert rep.docs == 2
    toks = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    want = tok.encode("first good line") + [tok.eos_id] + tok.encode("안녕 second good") + [tok.eos_id]
    assert toks.tolist() == want and rep.train_tokens == len(want) and rep.val_tokens == 0


def test_prepare_split_dtype_and_windows(demo_dir):
    train = TokenData(demo_dir / "train.bin", 32)
    val = TokenData(val_path_for(demo_dir / "train.bin"), 32)
    assert train.tokens.dtype == np.uint16 and train.vocab_size == 512
    assert 0.02 < len(val.tokens) / (len(train.tokens) + len(val.tokens)) < 0.1
    x, y = train.batch(np.array([0, 5]))
    assert x.shape == (2, 32) and (x[:, 1:] == y[:, :-1]).all()
    order = train.epoch_order(1, 0)
    assert sorted(order.tolist()) == list(range(train.n_windows))
    assert (order == train.epoch_order(1, 0)).all() and not (order == train.epoch_order(2, 0)).all()
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
