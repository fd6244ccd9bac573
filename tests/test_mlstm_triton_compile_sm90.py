"""The mLSTM Triton kernels compile for an H100 (sm_90) on a machine without a GPU (Triton ships ptxas).

The interpreter tests run the kernels' Python, not Triton's front end: a construct the compiler rejects (a global
that is not a ``tl.constexpr`` object, say) passes there and fails only on a GPU. This compiles all five kernels,
fp32 and bf16 inputs, at the launchers' tile sizes for the cell's shape (dk = 64, dv = 128, chunk 64).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import mlstm_triton_compile as compile_check  # noqa: E402

H100_SHARED = 232448  # bytes of shared memory one block may use on sm_90


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_mlstm_kernels_compile_for_sm90(dtype):
    configs = compile_check.launch_configs(64, 128, 64)
    assert len(configs) == 5
    for fn, consts, warps in configs:
        k = compile_check.compile_kernel(fn, dtype, consts, warps)
        assert "ptx" in k.asm and ".target sm_90" in k.asm["ptx"], fn.__name__
        assert 0 < k.metadata.shared <= H100_SHARED, (fn.__name__, k.metadata.shared)
