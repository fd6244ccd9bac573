"""Compile the mLSTM Triton kernels for an H100 (sm_90) without a GPU; print shared memory, registers, spills.

    PYTHONPATH=src python benchmarks/mlstm_triton_compile.py [--dk 64 --dv 128 --chunk 64]

Runs on CPU (Triton ships ptxas), at the launchers' own tile sizes and warp counts, for fp32 and bf16 inputs.
Pointer arguments and the head sizes get the divisibility-by-16 hint a real launch gives them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from cortexmem.ops.mlstm import triton as kernels

TARGET = GPUTarget("cuda", 90, 32)
_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
# Triton 3.9 emits PTX newer than its plain ptxas reads; its ptxas-blackwell (a newer ptxas) still targets sm_90a
PTXAS = next((p for p in (os.path.join(_BIN, n) for n in ("ptxas-blackwell", "ptxas")) if os.path.exists(p)), "ptxas")
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


def compile_kernel(fn, dtype: str, consts: dict, num_warps: int):
    """The compiled kernel (``asm``, ``metadata``) for sm_90."""
    sig = signature(fn, dtype, consts)
    div16 = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if sig[n].startswith("*") or n in ("DKR", "DVR")}
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=div16), target=TARGET,
                          options={"num_warps": num_warps, "num_stages": 1})


def ptxas_stats(ptx: str) -> tuple[str, str]:
    """(registers, spill store bytes) as ptxas reports them for sm_90a."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        log = subprocess.run([PTXAS, "-v", "-arch=sm_90a", path, "-o", os.path.join(d, "k.o")],
                             capture_output=True, text=True).stderr
    regs = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores", log)
    return (regs[0] if regs else "?"), (spills[0] if spills else "?")


def launch_configs(dk: int, dv: int, chunk: int) -> list[tuple]:
    """(kernel, constexprs, num_warps) exactly as the launchers pick them for these head sizes."""
    L, _, DK, DV, BV = kernels._sizes(10**6, dk, dv, chunk)
    bv_bwd = kernels._bwd_block_v(DV)
    common = dict(L=L, DK=DK, HAS_R=True)
    return [
        (kernels._fwd_state_kernel, dict(common, BV=BV), kernels.NUM_WARPS["fwd_state"]),
        (kernels._fwd_out_kernel, dict(common, BV=BV, SAVE=True), kernels.NUM_WARPS["fwd_out"]),
        (kernels._bwd_state_kernel, dict(common, BV=BV), kernels.NUM_WARPS["bwd_state"]),
        (kernels._bwd_qk_kernel, dict(common, BV=bv_bwd, NVT=DV // bv_bwd), kernels.NUM_WARPS["bwd_qk"]),
        (kernels._bwd_v_kernel, dict(common, BV=BV), kernels.NUM_WARPS["bwd_v"]),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dk", type=int, default=64)
    p.add_argument("--dv", type=int, default=128)
    p.add_argument("--chunk", type=int, default=64)
    a = p.parse_args()
    for dtype in ("fp32", "bf16"):
        for fn, consts, warps in launch_configs(a.dk, a.dv, a.chunk):
            start = time.time()
            k = compile_kernel(fn, dtype, consts, warps)
            took = time.time() - start
            regs, spills = ptxas_stats(k.asm["ptx"])
            shown = {key: consts[key] for key in ("L", "DK", "BV") if key in consts}
            print(f"{fn.__name__:18s} {dtype} {shown} warps={warps}: shared {k.metadata.shared} B, registers {regs}, "
                  f"spill stores {spills} B, compile {took:.1f} s")


if __name__ == "__main__":
    main()
