import pytest

from cortexmem.evals.schema import EvalSettings


@pytest.fixture
def settings():
    """Tiny training settings; tests override what they need with ``model_copy``."""

    def make(**kw) -> EvalSettings:
        base = dict(tasks=["delayed_recall"], stacks=["lstm"], epochs=1, batch_size=32, lr=3e-3,
                    weight_decay=0.01, seed=0, d_hidden=16, train_size=64, test_size=32, grad_clip=1.0,
                    device="cpu")
        return EvalSettings(**{**base, **kw})

    return make

