"""The mLSTM Triton kernels compile for an H100 (sm_90) on a machine without a GPU (Triton ships ptxas).

The interpreter tests run the kernels' Python, not Triton's front end: a construct the compiler rejects (a global
that is not a ``tl.constexpr`` object, say) passes there and fails only on a GPU. This compiles all five kernels,
fp32 and bf16 inputs, at the launchers' tile sizes (chunk 64) for the cell's shape (dk = 64, dv = 128) and for
dk = 128, dv = 128, and asserts ptxas reports no register spill stores for any of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

sys.path.insert(0, str(Path(__file__).parents[3] / "benchmarks"))
import mlstm_triton_compile as compile_check  # noqa: E402

H100_SHARED = 232448  # bytes of shared memory one block may use on sm_90


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize(("dk", "dv"), [(64, 128), (128, 128)])
def test_mlstm_kernels_compile_for_sm90_without_spills(dtype, dk, dv):
    configs = compile_check.launch_configs(dk, dv, 64)
    assert len(configs) == 5
    spills = {}
    for fn, consts, warps in configs:
        st = compile_check.sm90_stats(fn, dtype, consts, warps)
        k = st["kernel"]
        assert "ptx" in k.asm and ".target sm_90" in k.asm["ptx"], fn.__name__
        assert 0 < st["shared"] <= H100_SHARED, (fn.__name__, st["shared"])
        assert st["registers"] is not None and st["registers"] <= 255, (fn.__name__, st["registers"])
        spills[fn.__name__] = st["spill"]
    assert all(s == 0 for s in spills.values()), f"ptxas spill stores (bytes) at dk={dk}, dv={dv}: {spills}"
