"""NaN/Inf guard and path safety."""

from __future__ import annotations

import pytest
import torch

import cortexmem
from cortexmem import NonFiniteError, safe_join, safe_name


def _cfg(**kw):
    return cortexmem.CortexStackConfig(d_hidden=8, blocks=[
        cortexmem.PreUpBlockConfig(cell=cortexmem.LSTMCellConfig()),
        cortexmem.PassThroughBlockConfig(cell=cortexmem.CausalConv1dCellConfig()),
    ], **kw)


def test_finite_guard_names_the_first_bad_module():
    stack = cortexmem.build_cortex(_cfg(check_finite=True))
    stack(torch.randn(2, 5, 8))
    with torch.no_grad():
        stack.blocks[1].cell.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"blocks\.1\.cell \(CausalConv1dCell\)"):
        stack(torch.randn(2, 5, 8))


def test_finite_guard_blames_the_input_and_env_switch(monkeypatch):
    monkeypatch.setenv("CORTEX_CHECK_FINITE", "1")
    stack = cortexmem.build_cortex(_cfg())
    x = torch.randn(2, 5, 8)
    x[0, 2, 3] = float("nan")
    with pytest.raises(NonFiniteError, match="<input>"):
        stack(x)
    monkeypatch.delenv("CORTEX_CHECK_FINITE")
    y, _ = cortexmem.build_cortex(_cfg())(x)  # off by default: no check, NaNs flow through
    assert torch.isnan(y).any()


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\x00b", "a\\b", ".hidden", "x" * 201,
                                 "a..b", "C:\\x", "sp ace"])
def test_safe_name_rejects_escapes(bad, tmp_path):
    with pytest.raises(ValueError, match="must be 1-200 characters"):
        safe_name(bad, "session id")
    with pytest.raises(ValueError):
        safe_join(tmp_path, bad)


def test_safe_name_accepts_plain_ids(tmp_path):
    for good in ["abc", "user-42", "run_2026.11.23", "a@b", "X"]:
        assert safe_join(tmp_path, good) == tmp_path.resolve() / good
    with pytest.raises(TypeError, match="must be a str"):
        safe_name(3)
