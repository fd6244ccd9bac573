"""Every bad input to a ``cortex`` command ends with one ``error:`` line naming what is wrong, exit code 2 for a
usage error and 1 for a runtime failure, no traceback, and nothing created or lost (issue 25)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cortexmem.cli import main

from . import artifacts as A

ROOT = Path(__file__).resolve().parents[2]


def run(argv, capsys, cwd: Path | None = None, monkeypatch=None) -> tuple[int, str]:
    """``cortex argv`` in this process: ``(exit code, stderr)``."""
    if cwd is not None:
        monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as e:
        main(_with_quiet_logs(list(argv)))
    return e.value.code, capsys.readouterr().err


def _with_quiet_logs(argv: list[str]) -> list[str]:
    """``--log-level ERROR`` after the sub-command's options (not for ``eval --compare``'s two values)."""
    return argv if argv[:1] == ["eval"] else [*argv, "--log-level", "ERROR"]


def one_line(err: str, *needles: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    return {"root": root, "lm": A.lm_checkpoint(root), "stack": A.stack_dir(root), "db": A.session_store(root),
            "ppo": A.ppo_checkpoint(root), "llm": A.adapter_run(root)}


# ---- bad files: one line naming the file ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "header_len"])
def test_lm_generate_bad_weights(made, tmp_path, capsys, kind):
    ck = A.copy_tree(made["lm"], tmp_path / "ck")
    A.corrupt(ck / "model.safetensors", kind, random.Random(0))
    code, err = run(["lm", "generate", "--checkpoint", str(ck), "--prompt", "a"], capsys)
    assert code == 1
    one_line(err, "model.safetensors")


@pytest.mark.parametrize("name", ["model.json", "trainer.json", "train_state.safetensors", "memory/memory.json",
                                  "memory/memory.safetensors"])
def test_lm_train_resume_auto_bad_checkpoint(made, tmp_path, capsys, name):
    ck = tmp_path / "ck"
    A.copy_tree(made["lm"], ck / "last")
    A.corrupt(ck / "last" / name, "bad_utf8" if name.endswith(".json") else "random", random.Random(1))
    data = made["root"] / "data" / "train.bin"
    code, err = run(["lm", "train", "--train-data", str(data), "--checkpoint-dir", str(ck), "--resume", "auto",
                     "--dim", "16", "--layers", "1", "--heads", "2", "--seq-len", "8", "--max-steps", "2",
                     "--stm-capacity", "4", "--ltm-capacity", "16", "--batch-size", "2"], capsys)
    assert code == 1
    one_line(err, Path(name).name)


def test_lm_train_token_ids_outside_the_vocabulary(tmp_path, capsys):
    (tmp_path / "t.bin").write_bytes(random.Random(0).randbytes(4096))
    (tmp_path / "t.bin.json").write_text(json.dumps({"dtype": "uint16", "tokens": 2048, "vocab_size": 259}))
    code, err = run(["lm", "train", "--train-data", str(tmp_path / "t.bin"), "--checkpoint-dir",
                     str(tmp_path / "ck")], capsys)
    assert code == 1
    one_line(err, "t.bin", "outside the vocabulary")
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("cmd", ["eval", "train"])
def test_rl_bad_weights(made, tmp_path, capsys, cmd):
    out = tmp_path / "rl"
    A.copy_tree(made["ppo"], out / "checkpoint")
    A.corrupt(out / "checkpoint" / "model.safetensors", "truncated", random.Random(2))
    argv = (["rl", "eval", "--checkpoint", str(out / "checkpoint")] if cmd == "eval" else
            ["rl", "train", "--env", "cortexmem/RepeatK-v0", "--out", str(out), "--resume", "--frames", "64",
             "--no-progress"])
    code, err = run(argv, capsys)
    assert code == 1
    one_line(err, "model.safetensors")


def test_rl_stack_json_corrupted(tmp_path, capsys):
    (tmp_path / "s.json").write_bytes(b"\xe0\x80\x80 not utf-8")
    code, err = run(["rl", "train", "--env", "cortexmem/RepeatK-v0", "--stack", str(tmp_path / "s.json"),
                     "--out", str(tmp_path / "o"), "--frames", "8", "--no-progress"], capsys)
    assert code == 1
    one_line(err, "s.json", "not UTF-8")


@pytest.mark.parametrize("what", ["adapter", "adapter_json", "base"])
def test_llm_eval_niah_bad_files(made, tmp_path, capsys, what):
    base, run_dir = made["llm"]
    base, run_dir = A.copy_tree(base, tmp_path / "base"), A.copy_tree(run_dir, tmp_path / "run")
    target = {"adapter": run_dir / "memory" / "memory.safetensors",
              "adapter_json": run_dir / "memory" / "memory_config.json",
              "base": base / "model.safetensors"}[what]
    A.corrupt(target, "bad_utf8" if what == "adapter_json" else "random", random.Random(3))
    code, err = run(["llm", "eval-niah", "--base", str(base), "--adapter", str(run_dir), "--out",
                     str(tmp_path / "ev"), "--device", "cpu"], capsys)
    assert code == 1
    one_line(err, target.name)


def test_llm_adapter_run_folder_is_accepted(made):
    from cortexmem.llm import load_with_memory

    base, run_dir = made["llm"]
    mlm = load_with_memory(str(base), adapter=run_dir)  # the run folder, not run/memory
    assert mlm.layer_ids


def test_llm_base_that_does_not_exist(tmp_path, capsys):
    code, err = run(["llm", "train-niah", "--base", "/nonexistent/base", "--out", str(tmp_path / "o"),
                     "--device", "cpu"], capsys)
    assert code == 1
    one_line(err, "/nonexistent/base", "not found")


def test_sessions_bad_stores_and_listing_creates_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 50)
    code, err = run(["llm", "sessions", "list", "--store", str(bad)], capsys)
    assert code == 1
    one_line(err, "bad.db")
    code, err = run(["llm", "sessions", "list", "--store", str(tmp_path)], capsys)
    assert code == 1
    one_line(err, "is a directory")
    code, _ = run(["llm", "sessions", "list", "--store", str(tmp_path / "no" / "x.db")], capsys)
    assert code == 0 and not (tmp_path / "no").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.db"]


def test_eval_compare_corrupted_results(tmp_path, capsys):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "results.json").write_bytes(b'{"x": "\xe0"}')
    code, err = run(["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b")], capsys)
    assert code in (1, 2)
    one_line(err, "results.json", "not UTF-8")


def test_missing_extra_names_the_pip_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    (tmp_path / "in.jsonl").write_text('{"text": "hello world"}\n')
    code, err = run(["lm", "tokenizer", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "t")],
                    capsys)
    assert code == 1
    one_line(err, "pip install 'cortex-memory[lm]'")
    monkeypatch.setitem(sys.modules, "transformers", None)
    code, err = run(["llm", "pretrain-base", "--out", str(tmp_path / "b"), "--steps", "1"], capsys)
    assert code == 1
    one_line(err, "pip install 'cortex-memory[llm]'")


def test_pydantic_errors_are_one_line_per_field_without_url(capsys):
    from cortexmem.clikit import report
    from cortexmem.lm.model import LMConfig

    with pytest.raises(ValueError) as e:
        LMConfig(vocab_size=1, dim=2)
    assert report(e.value) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("error: ") for ln in lines)
    assert "vocab_size" in lines[0] and "dim" in lines[1] and "pydantic.dev" not in "".join(lines)


# ---- checks before work starts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    (["lm", "demo-data", "--output", "{dir}"], "is a directory"),
    (["lm", "generate", "--checkpoint", "x", "--prompt", "a", "--max-new-tokens", "-3"], "--max-new-tokens"),
    (["llm", "pretrain-base", "--out", "{dir}/b", "--steps", "0"], "--steps"),
    (["llm", "pretrain-base", "--out", "{file}"], "is a file"),
    (["bench", "--cells", "nosuch"], "unknown cell 'nosuch'"),
    (["bench", "--out", "{file}", "--cells", "lstm"], "is a file"),
    (["eval", "--out", "{file}", "--task", "majority", "--stack", "lstm"], "is a file"),
    (["rl", "train", "--env", "CartPole-v1", "--stack", "/nonexistent.json"], "no such stack file"),
    (["rl", "eval", "--checkpoint", "x", "--out", "{dir}"], "is a directory"),
    (["lm", "prepare", "--input", "{empty}", "--output", "{dir}/o.bin"], "is empty"),
    (["lm", "tokenizer", "--input", "{empty}", "--output", "{dir}/t"], "is empty"),
    (["lm", "tokenizer", "--input", "{binary}", "--output", "{dir}/t"], "nothing to train on"),
    (["doctor", "--json", "{dir}"], "is a directory"),
    (["eval", "--task", "mqar", "--lengths", "3"], "mqar needs an even length"),
])
def test_usage_errors_before_work(tmp_path, capsys, argv, needle):
    (tmp_path / "f").write_text("x")
    (tmp_path / "e.jsonl").write_bytes(b"")
    (tmp_path / "b.jsonl").write_bytes(random.Random(0).randbytes(500).replace(b"\n", b" "))
    subs = {"{dir}": str(tmp_path), "{file}": str(tmp_path / "f"), "{empty}": str(tmp_path / "e.jsonl"),
            "{binary}": str(tmp_path / "b.jsonl")}
    argv = [_sub(x, subs) for x in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    t0 = time.perf_counter()
    code, err = run(argv, capsys)
    assert code == 2, err
    one_line(err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert time.perf_counter() - t0 < 60  # failed before any training


def _sub(x: str, subs: dict[str, str]) -> str:
    for k, v in subs.items():
        x = x.replace(k, v)
    return x


def test_prepare_without_any_document_writes_nothing(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text("not json\n[1]\n")
    code, err = run(["lm", "prepare", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.bin")],
                    capsys)
    assert code == 1
    one_line(err, "in.jsonl", "no JSONL line")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_lm_checkpoints_are_real_folders(made, tmp_path):
    import shutil

    from cortexmem.lm.model import load_pretrained

    last = made["lm"]
    assert last.is_dir() and not last.is_symlink()
    copy = tmp_path / "x"
    shutil.copytree(last, copy)  # what `cp -r ck/last x` does
    assert load_pretrained(copy).config.vocab_size > 0


# ---- one voice, fast ------------------------------------------------------------------------------------------
def _cli(*args: str, cwd: Path, columns: int = 80) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), "HOME": str(cwd), "OMP_NUM_THREADS": "1",
           "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "cortexmem.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_usage_and_runtime_errors_in_a_real_process(tmp_path):
    r = _cli("lm", "--nope", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: No such option: --nope") and "Traceback" not in r.stderr
    r = _cli("rl", "eval", "--checkpoint", "absent", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "absent" in r.stderr


def test_help_is_fast_and_lists_every_group(tmp_path):
    t0 = time.perf_counter()
    r = _cli("--help", cwd=tmp_path)
    dt = time.perf_counter() - t0
    assert r.returncode == 0 and all(g in r.stdout for g in ("lm", "rl", "llm", "eval", "doctor", "bench"))
    assert dt < 5.0, dt  # the goal is < 1 s (benchmarks/startup.py); 5 s tolerates a loaded CI machine


@pytest.mark.parametrize("code", [
    "import cortexmem",
    "from cortexmem.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    "from cortexmem.cli import main\ntry:\n    main(['lm', '--help'])\nexcept SystemExit:\n    pass",
], ids=["import", "help", "lm-help"])
def test_startup_does_not_import_torch(tmp_path, code):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(sorted(m for m in ('torch', 'transformers',"
                        " 'torchrl', 'faiss', 'triton') if m in sys.modules))"], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout


def test_lazy_package_still_exports_everything():
    import cortexmem

    names = {"LSTMCell", "build_cortex", "load_stack", "AxonConfig", "list_cells", "MemoryCell"}
    assert names <= set(cortexmem.__all__)
    assert all(hasattr(cortexmem, n) for n in cortexmem.__all__)


def test_every_subcommand_has_log_level():
    from typer.main import get_command

    from cortexmem.cli import LAZY_COMMANDS, CortexGroup, app

    group = get_command(app)
    assert isinstance(group, CortexGroup)
    seen = 0

    def walk(cmd):
        nonlocal seen
        if isinstance(getattr(cmd, "commands", None), dict):
            for sub in cmd.commands.values():
                walk(sub)
        else:
            assert any(p.name == "log_level" for p in cmd.params), cmd.name
            seen += 1

    for name in [*group.commands, *LAZY_COMMANDS]:
        cmd = group.get_command(None, name)
        walk(cmd.real() if hasattr(cmd, "real") else cmd)
    assert seen >= 15


def test_piped_progress_prints_a_line_at_least_every_interval():
    import io

    from cortexmem.utils.progress import LineProgress

    buf = io.StringIO()
    bar = LineProgress(interval=0.05, stream=buf)
    with bar:
        tid = bar.add_task("training", total=10)
        bar.update(tid, completed=3)
        time.sleep(0.3)
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 3 and lines[0].startswith("training: 3/10 (30%)")
    quiet = io.StringIO()
    with LineProgress(interval=30, stream=quiet) as short:
        short.add_task("short", total=1)
    assert quiet.getvalue() == ""  # a run shorter than the interval prints nothing


def test_eval_compare_is_titled_a_vs_b(tmp_path):
    from cortexmem.evals.report import compare_table, load_results

    from .test_fuzz_loaders import _results_obj

    (tmp_path / "results.json").write_text(json.dumps(_results_obj()))
    res = load_results(tmp_path)
    assert compare_table(res, res, "A", "B").title == "A vs B"


def test_eval_help_shows_every_default():
    import re

    r = _cli("eval", "--help", cwd=Path("/tmp"), columns=200)
    text = re.sub(r"[│╭╮╰╯─]", " ", r.stdout)
    options = re.findall(r"^\s+(--[a-z-]+)", text, re.M)
    blocks = re.split(r"\n\s+(?=--[a-z-]+ )", text)
    missing = [b.split()[0] for b in blocks if b.strip().startswith("--") and "[default:" not in b
               and b.split()[0] not in ("--help", "--list")]
    assert len(options) >= 20 and not missing, missing
    assert " ." not in text and "  ." not in text
