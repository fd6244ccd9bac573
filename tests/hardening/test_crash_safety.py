"""SIGKILL a process while it writes checkpoints, many times; every committed checkpoint must still load."""

from __future__ import annotations

import json
import multiprocessing
import random
import time

import torch

import cortexmem

KILLS = 40


def _writer(stack, directory: str, log: str) -> None:
    torch.set_num_threads(1)
    start = len(open(log).read().split())
    v = start
    with open(log, "a") as f:
        while True:
            v += 1
            with torch.no_grad():
                for p in stack.parameters():
                    p.fill_(float(v))
            stack.save(directory)
            f.write(f"{v}\n")
            f.flush()


def test_sigkill_during_checkpoint_writes_never_loses_a_commit(tmp_path):
    ckpt, log = tmp_path / "ckpt", tmp_path / "log"
    log.write_text("")
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(0)
    stack = cortexmem.build_cortex(cortexmem.CortexStackConfig(d_hidden=32, blocks=[
        cortexmem.PreUpBlockConfig(cell=cortexmem.LSTMCellConfig(num_layers=2))]))
    for _ in range(KILLS):
        proc = ctx.Process(target=_writer, args=(stack, str(ckpt), str(log)))
        proc.start()
        time.sleep(rng.uniform(0.0, 0.15))
        proc.kill()  # SIGKILL at a random point, often inside save()
        proc.join()
        committed = [int(x) for x in log.read_text().split()]
        if not (ckpt / "config.json").exists():
            assert not committed
            continue
        stack = cortexmem.load_stack(ckpt)  # must always load
        value = next(stack.parameters()).flatten()[0].item()
        assert all(torch.all(p == value) for p in stack.parameters()), "weights from two versions mixed"
        # the loaded version is the last one logged as committed, or the one whose commit raced the log line
        assert value == committed[-1] or value == committed[-1] + 1 if committed else value >= 1
        assert len(list(ckpt.glob("model-*.safetensors"))) <= 2
        assert json.loads((ckpt / "config.json").read_text())["format"] == "cortexmem.stack"
    assert len(log.read_text().split()) > 0, "the writer never committed anything: kills came too early"
