"""Backend dispatch of the gated delta rule on CPU: the torch path runs; the Triton launcher checks its arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cortexmem.ops.gated_delta import chunk_gated_delta_rule, gated_delta_rule
from cortexmem.ops.gated_delta.checks import triton_rejects
from cortexmem.ops.registry import backends_for


def _inputs(T=21):
    g = torch.Generator().manual_seed(0)
    B, NH, D = 2, 2, 8
    q, k = (F.normalize(torch.randn(B, T, NH, D, generator=g), dim=-1) for _ in range(2))
    v = torch.randn(B, T, NH, D, generator=g)
    return q, k, v, F.logsigmoid(torch.randn(B, T, NH, generator=g)), torch.rand(B, T, NH, generator=g)


def test_cpu_dispatch_runs_torch_and_matches_chunk():
    q, k, v, g, beta = _inputs()
    r = torch.rand(2, 21, generator=torch.Generator().manual_seed(1)) < 0.2
    o, s = gated_delta_rule(q, k, v, g, beta, chunk_size=8, resets=r)
    o_c, s_c = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=8, resets=r)
    assert torch.equal(o, o_c) and torch.equal(s, s_c)
    with pytest.raises(ValueError, match="triton"):
        gated_delta_rule(q, k, v, g, beta, backend="triton")


def test_triton_backend_constraints():
    backend = backends_for("gated_delta")["triton"]
    assert backend.forward_only and backend.needs_triton and backend.devices == frozenset({"cuda"})
    assert "forward only" in triton_rejects(needs_grad=True)
    assert "chunk_size" in triton_rejects(chunk_size=8)
    assert triton_rejects(needs_grad=False, chunk_size=64) is None
    assert "Dk <= 128" in triton_rejects(dk=256, input_dtype=torch.bfloat16)
    assert "Dk <= 128" in triton_rejects(dk=256, input_dtype=torch.float32)
    assert triton_rejects(dk=128, input_dtype=torch.bfloat16) is None
    assert triton_rejects(dk=128, input_dtype=torch.float32) is None


def test_triton_takes_16bit_inputs_only_with_unpadded_heads():
    """bf16 / fp16 inputs with heads the kernels pad (72 x 66) gave a wrong forward on an H100 (fp32 was right): both
    Triton backends refuse them, so auto runs torch; fp32 inputs of those shapes still go to Triton."""
    from cortexmem.ops.gated_delta.checks import triton_autograd_rejects

    for rejects in (triton_rejects, triton_autograd_rejects):
        assert "heads of 64 or 128 dims, got Dk=72" in rejects(dk=72, dv=66, dtype=torch.bfloat16)
        assert "got Dv=66" in rejects(dk=64, dv=66, dtype=torch.bfloat16)
        assert rejects(dk=64, dv=128, dtype=torch.bfloat16) is None
        assert rejects(dk=128, dv=128, dtype=torch.bfloat16) is None
    assert triton_rejects(dk=72, dv=66, dtype=torch.float32) is None
    assert triton_autograd_rejects(dk=72, dv=66, dtype=torch.float32) is None


def test_triton_refuses_one_stage_for_bf16_products_and_unknown_products():
    pytest.importorskip("triton")
    from cortexmem.ops.gated_delta.triton_fwd import ForwardLaunch, gated_delta_forward

    q = k = torch.randn(1, 64, 1, 16).bfloat16()
    v = torch.randn(1, 64, 1, 16).bfloat16()
    g, beta = torch.full((1, 64, 1), -0.1).bfloat16(), torch.rand(1, 64, 1).bfloat16()
    with pytest.raises(ValueError, match="num_stages=1"):
        gated_delta_forward(q, k, v, g, beta, chunk_size=16, initial_state=None, output_final_state=True,
                            resets=None, config=ForwardLaunch(num_stages=1, products="bf16"))
    with pytest.raises(ValueError, match="products must be one of"):
        gated_delta_forward(q, k, v, g, beta, chunk_size=16, initial_state=None, output_final_state=True,
                            resets=None, config=ForwardLaunch(products="fp8"))


def test_product_modes_by_dtype_and_length():
    pytest.importorskip("triton")
    from cortexmem.ops.gated_delta.triton_fwd import (
        BF16_MIN_CHUNKS,
        ForwardLaunch,
        default_products,
        gated_delta_forward,
    )

    n = BF16_MIN_CHUNKS
    assert default_products(torch.bfloat16, n) == "bf16" and default_products(torch.bfloat16, n, fused=False) == "tf32"
    assert default_products(torch.bfloat16, n - 1) == "tf32" and default_products(torch.float16, n + 5) == "tf32"
    assert default_products(torch.float32, 100) == "tf32x3"
    q = k = torch.randn(1, 16 * (n - 1), 1, 16).bfloat16()
    g, beta = torch.full((1, 16 * (n - 1), 1), -0.1).bfloat16(), torch.rand(1, 16 * (n - 1), 1).bfloat16()
    with pytest.raises(ValueError, match="bf16 products need >="):
        gated_delta_forward(q, k, q, g, beta, chunk_size=16, initial_state=None, output_final_state=True,
                            resets=None, config=ForwardLaunch(products="bf16"))
    q = k = torch.randn(1, 16 * n, 1, 16).bfloat16()
    g, beta = torch.full((1, 16 * n, 1), -0.1).bfloat16(), torch.rand(1, 16 * n, 1).bfloat16()
    with pytest.raises(ValueError, match="fused read-out"):
        gated_delta_forward(q, k, q, g, beta, chunk_size=16, initial_state=None, output_final_state=True,
                            resets=None, config=ForwardLaunch(products="bf16", fused=False))


def test_check_decay_flag_and_cells_skip_the_host_sync(monkeypatch):
    import torch.nn.functional as F

    import cortexmem
    from cortexmem.ops.gated_delta import checks, gated_delta_rule

    q = k = F.normalize(torch.randn(1, 20, 2, 8), dim=-1)
    v, beta = torch.randn(1, 20, 2, 8), torch.rand(1, 20, 2)
    with pytest.raises(ValueError, match="LOG decay"):
        gated_delta_rule(q, k, v, torch.full((1, 20, 2), 0.5), beta)
    o, _ = gated_delta_rule(q, k, v, torch.full((1, 20, 2), 0.5), beta, check_decay=False)  # caller's promise
    assert o.isfinite().all()
    # the cell builds g <= log(alpha_max) itself: it must not pay for the check (a host sync on GPU)
    calls = []
    monkeypatch.setattr(checks, "check_log_decay", lambda g: calls.append(g))
    gated_delta_rule(q, k, v, torch.full((1, 20, 2), -0.5), beta)
    assert len(calls) == 1
    stack = cortexmem.build_cortex_auto_stack(32, 1, "D")
    y, _ = stack(torch.randn(2, 37, 32), None)
    assert y.shape == (2, 37, 32) and len(calls) == 1


def test_triton_autograd_backend_is_auto_for_training_on_cuda_only():
    from cortexmem.ops.gated_delta.checks import triton_autograd_rejects
    from cortexmem.ops.registry import select_backend

    table = backends_for("gated_delta")
    backend = table["triton_autograd"]
    assert not backend.opt_in and not backend.forward_only and backend.needs_triton
    # between the forward-only kernel (no gradient) and the torch path
    assert table["torch"].priority < backend.priority < table["triton"].priority
    # on CPU the torch path is the only one that can run, with or without gradients
    for grad in (False, True):
        assert select_backend("gated_delta", device="cpu", dtype=torch.float32, needs_grad=grad).name == "torch"
    # its constraints: the Triton forward's shape limits, no refusal of gradients
    assert triton_autograd_rejects(chunk_size=64, dk=128, needs_grad=True) is None
    assert "chunk_size must be 16, 32 or 64, got 8" in triton_autograd_rejects(chunk_size=8)
    assert "Dk <= 128" in triton_autograd_rejects(dk=256)
    # heads narrower than 64 (16-wide dot tiles crashed on an H100) go to the torch path
    assert "heads of 64 to 128 dims, got Dk=16" in triton_autograd_rejects(dk=16, dv=16)
    assert "got Dv=32" in triton_autograd_rejects(dk=64, dv=32)
    assert triton_autograd_rejects(dk=64, dv=64) is None
    q, k, v, g, beta = _inputs()
    with pytest.raises(ValueError, match="'triton_autograd' was requested but cannot run here"):
        gated_delta_rule(q, k, v, g, beta, backend="triton_autograd")


def test_gated_delta_cell_backend_option_is_checked_at_build():
    import cortexmem

    cfg = cortexmem.GatedDeltaCellConfig(hidden_size=16, num_heads=2, chunk_size=8)
    assert cfg.backend == "auto"
    with pytest.raises(ValueError, match="unknown backend 'tritn'"):
        cortexmem.build_cell(cfg.model_copy(update={"backend": "tritn"}))
    cell = cortexmem.build_cell(cfg.model_copy(update={"backend": "torch"}))
    assert cell.backend == "torch"


def test_launch_settings_go_in_one_config_object():
    pytest.importorskip("triton")
    from cortexmem.ops.gated_delta.triton_fwd import ForwardLaunch, gated_delta_forward, launch_config

    assert launch_config(None, {}, "f") == ForwardLaunch()
    q = k = v = torch.randn(1, 64, 1, 16).bfloat16()
    g, beta = torch.full((1, 64, 1), -0.1).bfloat16(), torch.rand(1, 64, 1).bfloat16()
    # the loose keywords of older calls still reach the kernels' checks, with a warning naming the config object
    with pytest.warns(DeprecationWarning, match=r"config=ForwardLaunch\(products=...\)"):
        with pytest.raises(ValueError, match="products must be one of"):
            gated_delta_forward(q, k, v, g, beta, chunk_size=16, initial_state=None, output_final_state=True,
                                resets=None, products="fp8")
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['blockv'\\]"):
        gated_delta_forward(q, k, v, g, beta, chunk_size=16, initial_state=None, output_final_state=True,
                            resets=None, blockv=32)
