"""Fuzz the argument parsing of the ``cortex llm / lm / rl / eval`` groups with tiny or invalid arguments.

Each command gets random options and values, then "anchor" arguments that make it fail fast (a missing model or
data file), so nothing long runs. Exit codes must be 0/1/2; an exception may only be one that ``cortex``'s
``main()`` turns into a one-line message (``USER_ERRORS``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from cortexmem.cli import USER_ERRORS, app

ROOT = Path(__file__).resolve().parents[2]
ABSENT = "absent/never-created"  # anchors only, relative to the per-run temp dir (the working directory)
VALUES = st.sampled_from(["-1", "0", "1", "2", "abc", "", "nan", "1e9", "../x", "out/x", "tpu", "cpu", "auto",
                          "4k", "0.5", "text", "off", "lstm", "x\x00y"])
COMMANDS = {
    ("llm", "train-niah"): ["--length", "--chunk-size", "--steps", "--batch-size", "--lr", "--mode", "--layers",
                            "--device", "--compressor", "--rank", "--bptt-chunks"],
    ("llm", "eval-niah"): ["--lengths", "--depths", "--samples", "--memory-mode", "--mode", "--device"],
    ("llm", "pretrain-base"): ["--hidden", "--layers", "--heads", "--seq-len", "--steps", "--device"],
    ("llm", "sessions", "list"): ["--json"],
    ("llm", "sessions", "show"): [],
    ("llm", "sessions", "delete"): [],
    ("lm", "tokenizer"): ["--vocab-size", "--output", "--field", "--byte"],
    ("lm", "prepare"): ["--tokenizer", "--val-fraction", "--seed", "--field", "--val-output"],
    ("lm", "demo-data"): ["--seed"],
    ("lm", "train"): ["--mode", "--dim", "--layers", "--heads", "--seq-len", "--max-steps", "--lr", "--resume"],
    ("lm", "generate"): ["--max-new-tokens", "--temperature", "--top-k", "--top-p", "--learn"],
    ("lm", "chat"): ["--max-new-tokens", "--temperature"],
    ("rl", "train"): ["--stack", "--num-envs", "--d-hidden", "--rollout-len", "--bptt", "--memory-inputs"],
    ("rl", "eval"): ["--episodes", "--out"],
    ("eval",): ["--stack", "--epochs", "--batch-size", "--lengths", "--mqar-slices", "--chunk-size", "--d-hidden",
                "--device", "--threads", "--log-level", "--list", "--lr", "--compare"],
}
FLAGS = {"--json", "--byte", "--list"}


def _anchor(cmd: tuple[str, ...], tmp: Path, draw_value: str) -> list[str]:
    """Arguments appended last (the last occurrence of an option wins) so the command stops early."""
    return {
        ("llm", "train-niah"): ["--base", ABSENT, "--out", str(tmp / "niah")],
        ("llm", "eval-niah"): ["--base", ABSENT, "--adapter", ABSENT, "--out", str(tmp / "ev")],
        ("llm", "pretrain-base"): ["--out", str(tmp / "base"), "--arch", "no-such-arch"],
        ("llm", "sessions", "list"): ["--store", str(tmp / "s.db")],
        ("llm", "sessions", "show"): [draw_value, "--store", str(tmp / "s.db")],
        ("llm", "sessions", "delete"): [draw_value, "--store", str(tmp / "s.db")],
        ("lm", "tokenizer"): ["--input", ABSENT],
        ("lm", "prepare"): ["--input", str(tmp / "in.jsonl"), "--output", str(tmp / "out.bin")],
        ("lm", "demo-data"): ["--output", str(tmp / "demo.jsonl"), "--docs", draw_value],
        ("lm", "train"): ["--train-data", ABSENT, "--checkpoint-dir", str(tmp / "ck")],
        ("lm", "generate"): ["--checkpoint", ABSENT, "--prompt", "hi"],
        ("lm", "chat"): ["--checkpoint", ABSENT],
        ("rl", "train"): ["--env", "no-such-env-v0", "--out", str(tmp / "rl"), "--frames", "8", "--no-progress"],
        ("rl", "eval"): ["--checkpoint", ABSENT],
        ("eval",): ["--task", "no-such-task"],
    }[cmd]


@st.composite
def invocations(draw):
    cmd = draw(st.sampled_from(sorted(COMMANDS)))
    args: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        opt = draw(st.sampled_from([*COMMANDS[cmd], "--nope", "--help"]))
        if opt == "--compare":
            args += [opt, draw(VALUES), draw(VALUES)]
        else:
            args += [opt] if opt in FLAGS or opt == "--help" else [opt, draw(VALUES)]
    value = draw(st.one_of(VALUES, st.sampled_from(["--help", "zz", "3", "ok-1"])))
    return cmd, args, value


_TMP: list[Path] = []


@pytest.mark.fuzz
@given(inv=invocations())
def test_fuzz_cli_groups(tmp_path_factory, inv):
    if not _TMP:
        _TMP.append(tmp_path_factory.mktemp("cli"))
        (_TMP[0] / "in.jsonl").write_bytes(b'{"text": "hello"}\nnot json\n\xff\n{"text": 3}\n')
    tmp = _TMP[0]
    cmd, args, value = inv
    argv = [*cmd, *args, *_anchor(cmd, tmp, value)]
    cwd = os.getcwd()
    os.chdir(tmp)  # commands with default output paths write here, never into the repository
    try:
        res = CliRunner().invoke(app, argv, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                                 "CORTEXMEM_SESSIONS": str(tmp / "s.db")})
    finally:
        os.chdir(cwd)
    assert res.exit_code in (0, 1, 2), (argv, res.output)
    assert not (tmp / ABSENT).exists(), argv
    exc = res.exception
    if exc is not None and not isinstance(exc, SystemExit):
        assert isinstance(exc, USER_ERRORS), (argv, repr(exc))
        assert str(exc), (argv, repr(exc))


def test_main_turns_user_errors_into_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "cortexmem.cli", "lm", "prepare", "--input", ABSENT,
                          "--output", str(tmp_path / "o.bin")], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr  # a missing --input is a usage error
    assert res.stderr.startswith("error:") and ABSENT in res.stderr
