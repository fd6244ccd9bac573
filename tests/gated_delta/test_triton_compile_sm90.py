"""The gated-delta Triton kernels compile for an H100 (sm_90) on a machine without a GPU (Triton ships ptxas).

The interpreter tests run the kernels' Python, not Triton's front end: a construct the compiler rejects (a global
that is not a ``tl.constexpr`` object, say) passes there and fails only on a GPU. This compiles every kernel (both WY
kernels) in every product mode.
"""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from cortexmem.ops.gated_delta import triton as kernels  # noqa: E402


def _compile(fn, dtype: str, op_dtype: str, consts: dict, num_stages: int):
    sig = {}
    for name in fn.arg_names:
        if name in ("Q", "K", "V", "G", "BETA", "R", "O"):
            sig[name] = f"*{dtype}"
        elif name in ("W", "U", "H"):
            sig[name] = f"*{op_dtype}"
        elif name in ("S0", "SF"):
            sig[name] = "*fp32"
        elif name in consts:
            sig[name] = "constexpr"
        else:
            sig[name] = "i32"
    src = ASTSource(fn=fn, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": num_stages})


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
