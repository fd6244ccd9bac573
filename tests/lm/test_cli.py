from __future__ import annotations

import json

from typer.testing import CliRunner

from cortexmem.cli import app


def test_cli_end_to_end(tmp_path):
    run = CliRunner()
    data, tok, ck = tmp_path / "demo.jsonl", tmp_path / "tok", tmp_path / "ck"

    def ok(*args, input=None):
        res = run.invoke(app, ["lm", *map(str, args)], input=input)
        assert res.exit_code == 0, res.output
        return res.output

    ok("demo-data", "--output", data, "--docs", 200)
    with open(data, "a", encoding="utf-8") as f:
        f.write("this is not json\n")
    ok("tokenizer", "--input", data, "--vocab-size", 300, "--output", tok)
    out = ok(
        "prepare",
        "--input",
        data,
        "--output",
        tmp_path / "train.bin",
        "--tokenizer",
        tok,
        "--val-fraction",
        0.1,
    )
    assert "demo.jsonl:201: skipped (invalid JSON" in out.replace("\n", "") and "1 bad lines" in out
    common = [
        "train",
        "--train-data",
        tmp_path / "train.bin",
        "--val-data",
        tmp_path / "train.val.bin",
        "--tokenizer",
        tok,
        "--dim",
        16,
        "--layers",
        1,
        "--heads",
        2,
        "--seq-len",
        16,
        "--batch-size",
        4,
        "--checkpoint-dir",
        ck,
    ]
    ok(*common, "--max-steps", 3, "--save-every", 2)
    assert json.loads((ck / "last" / "trainer.json").read_text())["step"] == 3
    out = ok(*common, "--max-steps", 5, "--resume", "auto")
    assert "steps 3..5" in out and json.loads((ck / "last" / "trainer.json").read_text())["step"] == 5
    out = ok(
        "generate",
        "--checkpoint",
        ck / "last",
        "--prompt",
        "The capital of",
        "--max-new-tokens",
        4,
        "--learn",
        "The capital of Zorbia is Quxi.",
        "--save-memory",
    )
    assert out.startswith("The capital of")
    assert json.loads((ck / "last" / "memory" / "memory.json").read_text())["counters"]["writes"] > 0
    out = ok(
        "chat",
        "--checkpoint",
        ck / "last",
        "--max-new-tokens",
        3,
        input="The capital of Vantor is Teslin.\n/stats\n/exit\n",
    )
    assert '"stm"' in out and "memory saved" in out
    saved = json.loads((ck / "last" / "memory" / "memory.json").read_text())
    assert saved["counters"]["writes"] > 12 and saved["clock"] > 0
