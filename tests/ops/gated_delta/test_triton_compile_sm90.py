"""The gated-delta Triton kernels compile for an H100 (sm_90) on a machine without a GPU (Triton ships ptxas).

The interpreter tests run the kernels' Python, not Triton's front end: a construct the compiler rejects (a global
that is not a ``tl.constexpr`` object, say) passes there and fails only on a GPU. This compiles every kernel (both WY
kernels) in every product mode, and the backward kernels (``triton_bwd``) in both product modes they use; ptxas
(through ``benchmarks/gated_delta_triton_compile.py``) must report no register spills for the backward kernels and
the fp32-input forward's unfused layout at their default launch sizes (C = 64, Dk = Dv = 64 and 128).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from cortexmem.ops.gated_delta import triton_fwd as kernels  # noqa: E402

# fp32 buffers of the backward kernels (triton_bwd); their other pointers take the inputs' dtype
_BWD_FP32 = {"DSF", "DSC", "DU", "DKD", "DW", "DGP", "LI", "DS0"}


def _compile(fn, dtype: str, op_dtype: str, consts: dict, num_stages: int, num_warps: int = 4):
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ("T", "N", "NH", "DKR", "DVR"):
            sig[name] = "i32"
        elif name in ("W", "U", "H"):
            sig[name] = f"*{op_dtype}"
        elif name in ("S0", "SF") or name in _BWD_FP32:
            sig[name] = "*fp32"
        else:
            sig[name] = f"*{dtype}"
    src = ASTSource(fn=fn, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


@pytest.mark.parametrize("products,dtype,DK", [("tf32x3", "fp32", 64), ("tf32", "bf16", 128), ("bf16", "bf16", 64)])
def test_kernels_compile_for_sm90(products, dtype, DK):
    dot = kernels.PRODUCTS[products]
    op_dtype = "bf16" if products == "bf16" else "fp32"
    stages = kernels._default_stages(dot)
    base = dict(DK=DK, DV=DK, C=64, HAS_R=True, DOT=dot)
    wy = _compile(kernels._wy_kernel, dtype, op_dtype, base, 1)
    state = _compile(kernels._state_kernel, dtype, op_dtype,
                     dict(base, DH=DK, SPLIT=False, BV=32, HAS_S0=True, FUSED=False), stages)
    out = _compile(kernels._out_kernel, dtype, op_dtype, dict(base, DH=DK, SPLIT=False, BV=32), 1)
    wy_chunk = _compile(kernels._wy_chunk_kernel, dtype, op_dtype, dict(base, BD=kernels.WY_CHUNK_BLOCK), 1)
    for k in (wy, state, out, wy_chunk):
        assert "ptx" in k.asm and k.metadata.shared > 0
    assert wy_chunk.metadata.shared <= 227 * 1024  # the most one sm_90 program may take


def _compile_script():
    """``benchmarks/gated_delta_triton_compile.py`` as a module: its ptxas run and default launch lists."""
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "gated_delta_triton_compile.py"
    spec = importlib.util.spec_from_file_location("gated_delta_triton_compile", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not os.path.exists(mod.PTXAS):
        pytest.skip(f"no ptxas at {mod.PTXAS}")
    return mod


@pytest.mark.parametrize("DK", [64, 128])
@pytest.mark.parametrize("products", ["tf32", "tf32x3"])
def test_backward_kernels_do_not_spill_on_sm90(products, DK):
    # every backward kernel (and the recompute of W, U and the chunk-entry states) at its default launch sizes, C = 64.
    # One exception, fp32 inputs (3xTF32): the dq/dk and WY kernels keep the 32/64-wide blocks that matched the fp64
    # reference on an H100 and spill there; the spill-free 16-wide blocks crashed it (illegal memory access)
    script = _compile_script()
    launches = script.backward_launches(products, DK)
    assert len(launches) == (6 if products == "tf32x3" else 5)  # 3xTF32 adds the intra-chunk kernel
    for fn, dtype, consts, warps in launches:
        st = script.sm90_stats(fn, dtype, consts, warps, 1)
        if "BK" in consts:
            assert consts["BK"] >= 32 and consts["BV"] >= 32, f"{fn.__name__}: 16-wide dot tiles ({consts})"
        if not (products == "tf32x3" and fn.__name__ in ("_bwd_dqk_kernel", "_bwd_wy_kernel")):
            assert st["spill"] == 0, f"{fn.__name__} {consts} warps={warps}: {st}"
        assert 0 < st["shared"] <= 227 * 1024  # fits one program per SM on sm_90
        assert st["registers"] <= 255


@pytest.mark.parametrize("DK", [64, 128])
def test_fp32_forward_unfused_layout_does_not_spill_on_sm90(DK):
    # fp32 inputs (3xTF32) with fused=False: the WY kernel, the unfused state kernel (split state at Dk = 128) and the
    # read-out kernel (the fused default spills; see FP32_FUSED_DEFAULT)
    script = _compile_script()
    for fn, dtype, consts, warps in script.fp32_forward_launches(DK):
        st = script.sm90_stats(fn, dtype, consts, warps, 1)
        assert st["spill"] == 0, f"{fn.__name__} {consts} warps={warps}: {st}"
        assert 0 < st["shared"] <= 227 * 1024
