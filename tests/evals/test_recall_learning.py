"""Recall paths learn MQAR on CPU: attention (transformer; hybrid with its window over the whole sequence),
mLSTM and the gated delta rule (gated_delta; hybrid with a window of 8, where most recall goes through its memory).

Each run trains with the eval trainer on a small MQAR and must end far above chance (1/32, 1/64); a path that
stops learning recall stays on the "one of the context values" plateau (1/pairs: 0.25, 0.125).
"""

import pytest

from cortexmem.evals.ddp import DistContext
from cortexmem.evals.tasks import TEST, make_task
from cortexmem.evals.train import run_one

SMALL = make_task("mqar", 32, pairs=4, vocab_size=64)  # chance 1/32
WIDE = make_task("mqar", 64, pairs=8, vocab_size=128)  # chance 1/64


@pytest.mark.parametrize("stack,spec,d,epochs,train_size,threshold", [
    ("transformer", WIDE, 64, 4, 4096, 0.9),  # 0.985 measured
    # window 512 over 64 tokens: exact attention. 0.994 measured (384 steps); 320 steps gave 0.995 and 0.726 on
    # seeds 1, 2. In the GTrXL-gated blocks it had before, MQAR 32:4 at d=32 reached 0.494 (0.25: the plateau)
    ("hybrid", WIDE, 64, 1, 12288, 0.7),
    ("mlstm", SMALL, 32, 1, 16384, 0.9),
])
def test_learns_mqar_recall(stack, spec, d, epochs, train_size, threshold, settings):
    # steps of 32 sequences (512; hybrid 384); the recurrent paths need fresh sequences (on 4096 repeated ones they
    # stay on the 1/pairs plateau), the transformer does not
    cfg = settings(tasks=["mqar"], stacks=[stack], epochs=epochs, batch_size=32, lr=3e-3, d_hidden=d,
                   train_size=train_size, test_size=256)
    r = run_one(stack, spec, cfg, DistContext())
    assert r.chance == pytest.approx(spec.chance)
    assert r.test_accuracy >= threshold, (stack, r.curves.test_accuracy)


def test_gated_delta_learns_mqar_recall(settings):
    # 512 fresh sequences of 32 at d=32: one head of 64 dims (stacks._delta_heads) with retentive decays
    # (stacks._retentive_decay). 0.82, 0.92, 0.93 measured on seeds 0, 1, 2; the stack as it was (4 heads of 16,
    # the cell's decay draw) stayed on the 0.25 plateau (0.23).
    cfg = settings(tasks=["mqar"], stacks=["gated_delta"], epochs=1, batch_size=32, lr=3e-3, d_hidden=32,
                   train_size=16384, test_size=256)
    r = run_one("gated_delta", SMALL, cfg, DistContext())
    assert r.test_accuracy >= 0.6, r.curves.test_accuracy


def window_share(spec, window: int, n: int = 256) -> float:
    """Share of the test queries whose key-value pair lies within the last ``window`` tokens before the query."""
    data = spec.split(TEST, n, 0)
    rows, qpos = data.mask.nonzero(as_tuple=True)
    keys = data.tokens[rows, : 2 * spec.options["pairs"] : 2]  # (Q, pairs): keys at even positions
    value_pos = 2 * (keys == data.tokens[rows, qpos][:, None]).float().argmax(1) + 1
    return (value_pos > qpos - window).float().mean().item()


def test_hybrid_delta_path_learns_mqar_recall(settings):
    # window 8 on MQAR 32:4: attention alone answers at most the queries whose pair is in the window (about 0.41)
    # and guesses the rest, so passing 0.6 needs the delta memory. 0.97, 1.0, 1.0 measured on seeds 0-2 at d=64 in
    # PostUp blocks; in GTrXL-gated blocks it gave 0.20-0.38 on some seeds and 0.84-0.99 on others.
    bound = window_share(SMALL, 8)
    assert bound + (1 - bound) * SMALL.chance < 0.5, bound
    cfg = settings(tasks=["mqar"], stacks=["hybrid_w8"], epochs=1, batch_size=32, lr=3e-3, d_hidden=64,
                   train_size=16384, test_size=256)
    r = run_one("hybrid_w8", SMALL, cfg, DistContext())
    assert r.test_accuracy >= 0.6, r.curves.test_accuracy
