"""Training: lstm learns delayed recall; truncated BPTT; step-vs-sequence checks; the stack registry."""

import pytest
import torch

from cortexmem.evals.ddp import DistContext
from cortexmem.evals.models import CausalTransformer, EvalModel, step_vs_sequence_error
from cortexmem.evals.stacks import available_stacks, build_stack, list_stacks, register_stack, stack_status
from cortexmem.evals.tasks import make_task
from cortexmem.evals.train import _masked_loss, _train_batch, run_one


def test_lstm_learns_delayed_recall_at_32(settings):
    cfg = settings(epochs=3, batch_size=64, lr=3e-3, d_hidden=64, train_size=1024, test_size=256)
    r = run_one("lstm", make_task("delayed_recall", 32), cfg, DistContext())
    assert r.test_accuracy >= 0.95, r.curves.test_accuracy
    assert r.step_check == "step" and r.step_seq_max_abs_err < 1e-4
    assert r.steps == 3 * 16 and len(r.curves.train_loss) == r.steps and len(r.curves.test_accuracy) == 3
    assert r.tokens_per_s > 0 and r.params == sum(p.numel() for p in
                                                  EvalModel(build_stack("lstm", 64), 9, 4, 64).parameters())


def test_target_accuracy_stops_a_solved_run(settings):
    """A run stops after the first epoch at the target; curves and steps say how far it went."""
    cfg = settings(epochs=4, target_accuracy=1e-6)
    r = run_one("lstm", make_task("delayed_recall", 12), cfg, DistContext())
    assert r.steps == 2 and r.curves.epoch == [1] and len(r.curves.test_accuracy) == 1
    full = run_one("lstm", make_task("delayed_recall", 12), settings(epochs=2), DistContext())
    assert full.steps == 4 and full.curves.epoch == [1, 2]


def test_truncated_bptt_detaches_between_chunks():
    torch.manual_seed(0)
    model = EvalModel(build_stack("lstm", 8), 9, 4, 8)
    data = make_task("delayed_recall", 12).split("train", 4, 0)
    # Chunks of 4: the only loss is at t=11, so the cue at t=0 (first chunk) gets no gradient path; the
    # embedding row of cue tokens receives gradient only through the full-sequence backward.
    cues = data.tokens[:, 0].unique()
    full = _grad_on_rows(model, data, None, cues)
    chunked = _grad_on_rows(model, data, 4, cues)
    assert full > 0 and chunked == 0
    # with chunk >= T the two paths agree exactly
    model.zero_grad()
    loss_a = _train_batch(model, model, DistContext(), data.tokens, data.targets, data.mask, None)
    ga = model.head.weight.grad.clone()
    model.zero_grad()
    loss_b = _train_batch(model, model, DistContext(), data.tokens, data.targets, data.mask, 12)
    assert loss_a == pytest.approx(loss_b) and torch.allclose(ga, model.head.weight.grad)


def test_dense_loss_matches_the_masked_one():
    """The CUDA path (head at every position, ignored targets) gives the masked path's loss, state and grads."""
    torch.manual_seed(0)
    model = EvalModel(build_stack("lstm", 8), 66, 66, 8)
    data = make_task("mqar", 34, pairs=3, vocab_size=66).split("train", 5, 0)
    count = data.mask.sum()
    out = []
    for dense in (False, True):
        model.zero_grad()
        loss, state = _masked_loss(model, data.tokens, data.targets, data.mask, count, dense=dense)
        loss.backward()
        out.append((loss.detach(), state, [p.grad.clone() for p in model.parameters()]))
    (la, sa, ga), (lb, sb, gb) = out
    assert torch.allclose(la, lb, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ga, gb, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(sa.values(True, True), sb.values(True, True), strict=True))


def _grad_on_rows(model, data, chunk, rows):
    model.zero_grad()
    _train_batch(model, model, DistContext(), data.tokens, data.targets, data.mask, chunk)
    return model.embed.weight.grad[rows].abs().sum().item()


def test_chunked_run_and_transformer_prefix_check(settings):
    cfg = settings(chunk_size=8)
    r = run_one("lstm", make_task("needle", 24), cfg, DistContext())
    assert r.chunk_size == 8 and set(r.slices) <= {f"depth {i / 5:.1f}-{(i + 1) / 5:.1f}" for i in range(5)}
    t = run_one("transformer", make_task("mqar", 32, pairs=2, vocab_size=64), cfg, DistContext())
    assert t.step_check == "prefix" and t.step_seq_max_abs_err < 1e-4 and t.chunk_size is None


def test_prefix_check_catches_a_non_causal_model():
    torch.manual_seed(0)
    model = EvalModel(CausalTransformer(8, n_layers=1, n_heads=2), 10, 3, 8)
    tokens = torch.randint(0, 10, (2, 9))
    assert step_vs_sequence_error(model, tokens)[0] < 1e-5
    model.core.forward = lambda x: x.cumsum(1).flip(1)  # looks at the future
    assert step_vs_sequence_error(model, tokens)[0] > 1e-3


def test_registry_reports_unavailable_stacks(monkeypatch):
    from cortexmem.stacks import named

    monkeypatch.setattr(named, "_STACKS", dict(named._STACKS))
    ok, missing = available_stacks(16)
    assert {"lstm", "conv", "transformer"} <= set(ok)
    assert set(ok) | set(missing) == set(list_stacks())
    assert all(isinstance(v, str) and v for v in missing.values())
    register_stack("_missing_cell", lambda d: _needs("NoSuchCellConfig", d))
    assert "unknown config type 'NoSuchCellConfig'" in stack_status("_missing_cell", 16)
    with pytest.raises(ValueError, match="unknown stack 'zzz'; valid: lstm"):
        build_stack("zzz", 16)


def _needs(name, d):
    from cortexmem.stacks.named import _cell

    return _cell(name, d)


@pytest.mark.parametrize("name", list_stacks())
def test_every_available_stack_builds_and_steps_like_sequence(name):
    reason = stack_status(name, 16)
    if reason is not None:
        pytest.skip(f"{name} unavailable in this checkout: {reason}")
    torch.manual_seed(0)
    model = EvalModel(build_stack(name, 16), 10, 3, 16)
    tokens = torch.randint(0, 10, (2, 11))
    logits, _ = model(tokens, torch.ones(2, 11, dtype=torch.bool))
    assert logits.shape == (22, 3) and torch.isfinite(logits).all()
    err, mode = step_vs_sequence_error(model, tokens)
    assert err < 1e-4 and mode == ("step" if model.recurrent else "prefix")
