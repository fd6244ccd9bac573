"""GraphedModule on CPU: the eager fallback equals the stack; its argument errors."""

from __future__ import annotations

import pytest
import torch


def test_graphed_module_eager_fallback_and_errors():
    import cortexmem
    from cortexmem import GraphedModule

    torch.manual_seed(0)
    stack = cortexmem.build_cortex_auto_stack(16, 2, "AXMS")
    g = GraphedModule(stack, batch=3, seq=11, device="cpu")
    assert not g.use_graph
    x = torch.randn(3, 11, 16)
    y, s = g(x)
    y_ref, s_ref = stack(x, None)
    torch.testing.assert_close(y, y_ref)
    y2, _ = g(x, s.detach())
    y2_ref, _ = stack(x, s_ref.detach())
    torch.testing.assert_close(y2, y2_ref)
    with pytest.raises(ValueError, match="shape"):
        g(torch.randn(3, 12, 16))
    with pytest.raises(ValueError, match="without resets"):
        g(x, resets=torch.zeros(3, 11, dtype=torch.bool))
    with pytest.raises(ValueError, match="constant"):
        g(x, s)
    with pytest.raises(ValueError, match="CUDA"):
        GraphedModule(stack, batch=3, seq=11, device="cpu", use_graph=True)
    with pytest.raises(TypeError, match="MemoryModule"):
        GraphedModule(torch.nn.Linear(3, 3), batch=3, seq=11, device="cpu")
    gr = GraphedModule(stack, batch=3, seq=11, device="cpu", resets=True)
    r = torch.zeros(3, 11, dtype=torch.bool)
    r[1, 5] = True
    torch.testing.assert_close(gr(x, resets=r)[0], stack(x, None, resets=r)[0])
