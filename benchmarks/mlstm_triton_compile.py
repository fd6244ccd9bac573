"""Compile the mLSTM Triton kernels for an H100 (sm_90) without a GPU; print shared memory, registers, spills.

    PYTHONPATH=src python benchmarks/mlstm_triton_compile.py [--dk 64 --dv 128 --chunk 64]

Runs on CPU (Triton ships ptxas), at the launchers' own tile sizes and warp counts, for fp32 and bf16 inputs.
Pointer arguments and the head sizes get the divisibility-by-16 hint a real launch gives them.
"""

from __future__ import annotations

import argparse

from gated_delta_triton_compile import compile_sm90

from cortexmem.ops.mlstm import triton as kernels

INPUTS = {"Q", "K", "V", "LI", "LF"}  # in the caller's dtype; states, saved tensors and gradients are fp32
INTS = {"T", "NC", "NH", "NV", "DKR", "DVR"}


def signature(fn, dtype: str, consts: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in INTS:
            sig[name] = "i32"
        elif name in INPUTS:
            sig[name] = f"*{dtype}"
        elif name == "RST":
            sig[name] = "*u8"
        elif name == "FL":
            sig[name] = "*i8"
        else:
            sig[name] = "*fp32"
    return sig


def sm90_stats(fn, dtype: str, consts: dict, num_warps: int) -> dict:
    """The kernel compiled for sm_90 (``kernel``) with its ``shared`` bytes, ``registers``, ``spill`` store bytes
    and compile ``seconds`` (ptxas figures, see ``gated_delta_triton_compile.compile_sm90``)."""
    sig = signature(fn, dtype, consts)
    div16 = {n for n in fn.arg_names if sig[n].startswith("*") or n in ("DKR", "DVR")}
    return compile_sm90(fn, sig, consts, num_warps, 1, div16)


def launch_configs(dk: int, dv: int, chunk: int) -> list[tuple]:
    """(kernel, constexprs, num_warps) exactly as the launchers pick them for these head sizes."""
    L, _, DK, DV, BV = kernels._sizes(10**6, dk, dv, chunk)
    bv_bwd = kernels._bwd_block_v(DV)
    common = dict(L=L, DK=DK, HAS_R=True)

    def bk(name):
        return kernels._block_k(DK, name)

    return [
        (kernels._fwd_state_kernel, dict(L=L, BK=bk("fwd_state"), BV=BV, HAS_R=True), kernels.NUM_WARPS["fwd_state"]),
        (kernels._fwd_out_kernel, dict(common, BK=bk("fwd_out"), BV=BV, SAVE=True), kernels.NUM_WARPS["fwd_out"]),
        (kernels._bwd_state_kernel, dict(common, BV=kernels._bwd_state_block_v(DV)), kernels.NUM_WARPS["bwd_state"]),
        (kernels._bwd_qk_kernel, dict(common, BK=bk("bwd_qk"), BV=bv_bwd, NVT=DV // bv_bwd),
         kernels.NUM_WARPS["bwd_qk"]),
        (kernels._bwd_v_kernel, dict(common, BK=bk("bwd_v"), BV=BV), kernels.NUM_WARPS["bwd_v"]),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dk", type=int, default=64)
    p.add_argument("--dv", type=int, default=128)
    p.add_argument("--chunk", type=int, default=64)
    a = p.parse_args()
    for dtype in ("fp32", "bf16"):
        for fn, consts, warps in launch_configs(a.dk, a.dv, a.chunk):
            st = sm90_stats(fn, dtype, consts, warps)
            shown = {key: consts[key] for key in ("L", "DK", "BK", "BV") if key in consts}
            print(f"{fn.__name__:18s} {dtype} {shown} warps={warps}: shared {st['shared']} B, registers "
                  f"{st['registers'] or '?'}, spill stores {'?' if st['spill'] is None else st['spill']} B, "
                  f"compile {st['seconds']:.1f} s")


if __name__ == "__main__":
    main()
