"""The gated-delta Triton kernels compile for an H100 (sm_90) on a machine without a GPU (Triton ships ptxas).

The interpreter tests run the kernels' Python, not Triton's front end: a construct the compiler rejects (a global
that is not a ``tl.constexpr`` object, say) passes there and fails only on a GPU. This compiles every kernel (both WY
kernels) in every product mode, and the backward kernels (``triton_bwd``) in both product modes they use.
"""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from cortexmem.ops.gated_delta import triton as kernels  # noqa: E402

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


@pytest.mark.parametrize("products,dtype,DK", [("tf32x3", "fp32", 128), ("tf32", "bf16", 128)])
def test_backward_kernels_compile_for_sm90(products, dtype, DK):
    from cortexmem.ops.gated_delta import triton_bwd

    dot = kernels.PRODUCTS[products]
    cfg = triton_bwd.backward_config(DK, DK, 8, dot)
    (bv, sw), (qbk, qbv, qw), (wbk, wbv, ww) = cfg["state"], cfg["dqk"], cfg["wy"]
    base = dict(DK=DK, DV=DK, C=64, HAS_R=True, DOT=dot)
    for fn, consts, warps in ((triton_bwd._bwd_state_kernel, dict(base, BV=bv, HAS_DSF=True, HAS_S0=True), sw),
                              (triton_bwd._bwd_dqk_kernel, dict(base, BK=qbk, BV=qbv), qw),
                              (triton_bwd._bwd_wy_kernel, dict(base, BK=wbk, BV=wbv, NKQ=DK // qbk), ww)):
        k = _compile(fn, dtype, "fp32", consts, 1, warps)  # the backward recomputes W, U in fp32
        assert "ptx" in k.asm and k.metadata.shared > 0
        assert k.metadata.shared <= 227 * 1024  # fits one program per SM on sm_90
