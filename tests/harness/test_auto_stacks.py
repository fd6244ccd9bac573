"""The behavioural contract over stacks from the pattern language and over Column variants."""

from __future__ import annotations

import pytest
import torch

import cortexmem
from cortexmem import BUILTIN_TOKENS, RouterConfig, build_cortex_auto_stack

from .contract import CHECKS

HIDDEN = 16


def _auto(layers, pattern, overrides=None):
    def factory():
        return build_cortex_auto_stack(HIDDEN, layers, pattern, override_global_configs=overrides)

    return factory


def _column(**kw):
    def factory():
        cfg = cortexmem.ColumnBlockConfig.example(cortexmem.LSTMCellConfig())
        return cortexmem.build_block(cfg.model_copy(update=kw), HIDDEN)

    return factory


CASES = (
    [pytest.param(_auto(1, tok), id=f"token-{tok}") for tok in BUILTIN_TOKENS]
    + [
        pytest.param(_auto(2, "AXMS"), id="AXMS-2layers"),
        pytest.param(_auto(2, ["LC", "C L"], [RouterConfig(top_k=1, d_key=8)]), id="LC-top1"),
        pytest.param(_column(use_mixer=False, router=RouterConfig(d_key=4, use_token_refinement=False)),
                     id="column-plain"),
    ]
)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("factory", CASES)
def test_contract(factory, check):
    torch.manual_seed(0)
    module = factory().eval()
    check(module)
