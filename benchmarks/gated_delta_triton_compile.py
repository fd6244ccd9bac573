"""Compile the gated-delta Triton kernels for an H100 (sm_90) without a GPU; print shared memory, registers, spills.

Runs on CPU (Triton ships ptxas): a register spill or a shared-memory need that leaves one program per SM shows
here before any GPU time is spent. Integer arguments get the divisibility-by-16 hint a real launch gives them.
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

from cortexmem.ops.gated_delta import triton_fwd as kernels

TARGET = GPUTarget("cuda", 90, 32)
# pointers of the backward kernels (triton_bwd): in the inputs' dtype (d o and the input gradients), or fp32 buffers
BWD_INPUT_DTYPE = {"DO", "DQ", "DKO", "DVO", "DB", "DG"}
BWD_FP32 = {"DSF", "DSC", "DU", "DKD", "DW", "DGP", "LI", "DS0"}


def _ptxas() -> str:
    """The ptxas Triton itself runs for sm_90 (Triton 3.9 takes its newer ``ptxas-blackwell`` there: the older
    ``ptxas`` rejects the PTX version it emits); the plain bundled one where ``get_ptxas(arch)`` is missing."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(TARGET.arch).path
    except (ImportError, AttributeError, TypeError):
        return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


PTXAS = _ptxas()


def _signature(fn, dtype: str, op_dtype: str) -> dict:
    ptrs = {"Q", "K", "V", "G", "BETA", "R", "O"} | BWD_INPUT_DTYPE
    sig = {}
    for name in fn.arg_names:
        if name in ptrs:
            sig[name] = f"*{dtype}"
        elif name in ("W", "U", "H"):
            sig[name] = f"*{op_dtype}"  # the WY terms and stored states: bf16 only with bf16 products
        elif name in ("S0", "SF") or name in BWD_FP32:
            sig[name] = "*fp32"
        elif name.isupper() and name not in ("T", "N", "NH", "DKR", "DVR"):
            sig[name] = "constexpr"
        else:
            sig[name] = "i32"
    return sig


def compile_sm90(fn, sig: dict, consts: dict, num_warps: int, num_stages: int, div16: set) -> dict:
    """Compile ``fn`` for sm_90 (the arguments named in ``div16`` get the divisibility-by-16 hint of a real launch)
    and run ptxas on its PTX: the compiled ``kernel``, ``shared`` bytes, ``registers``, ``spill`` store bytes (None
    where ptxas printed no figure) and the compile ``seconds``. The mLSTM compile check uses it too."""
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if n in div16}
    start = time.time()
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs), target=TARGET,
                       options={"num_warps": num_warps, "num_stages": num_stages})
    took = time.time() - start
    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "k.ptx")
        with open(ptx, "w") as f:
            f.write(k.asm["ptx"])
        log = subprocess.run([PTXAS, "-v", "-arch=sm_90a", ptx, "-o", os.path.join(d, "k.o")],
                             capture_output=True, text=True).stderr
    regs = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores", log)
    return dict(kernel=k, shared=k.metadata.shared, registers=int(regs[0]) if regs else None,
                spill=int(spills[0]) if spills else None, seconds=took)


def sm90_stats(fn, dtype: str, consts: dict, num_warps: int, num_stages: int) -> dict:
    """:func:`compile_sm90` of a gated-delta kernel: ``shared``, ``registers``, ``spill`` bytes, ``seconds``."""
    sig = _signature(fn, dtype, "bf16" if consts["DOT"] == kernels.PRODUCTS["bf16"] else "fp32")
    div16 = {n for n in fn.arg_names if sig[n] != "constexpr" and n != "NH"}
    return compile_sm90(fn, sig, consts, num_warps, num_stages, div16)


def compile_stats(fn, dtype: str, consts: dict, num_warps: int, num_stages: int) -> str:
    """One line: the kernel, its constants and launch options, shared bytes, registers, spill bytes, compile s."""
    st = sm90_stats(fn, dtype, consts, num_warps, num_stages)
    shown = {key: val for key, val in consts.items() if key in ("DK", "BV", "BK", "BD", "FUSED", "SPLIT", "PRE",
                                                                  "DOT")}
    return (f"{fn.__name__:17s} {dtype} {shown} warps={num_warps} stages={num_stages}: shared {st['shared']} B, "
            f"registers {st['registers'] or '?'}, spill stores {'?' if st['spill'] is None else st['spill']} B, "
            f"compile {st['seconds']:.1f} s")


# (batch*head) count of the default launch sizes: enough programs that no V-block is narrowed for parallelism
# (the widest defaults, the most registers)
N_BH = 1024


def backward_launches(products: str, DK: int) -> list:
    """``(kernel, input dtype, constants, warps)`` of every backward kernel at its default launch sizes (C = 64,
    Dk = Dv = DK), the recompute of W, U and of the chunk-entry states (the forward's WY and unfused state kernels)
    first."""
    from cortexmem.ops.gated_delta import triton_bwd

    dot = kernels.PRODUCTS[products]
    dtype = "fp32" if products == "tf32x3" else "bf16"
    cfg = triton_bwd.backward_config(DK, DK, N_BH, dot)
    base = dict(DK=DK, DV=DK, C=64, HAS_R=True, DOT=dot)
    split = dict(DH=DK // 2 if cfg["split"] else DK, SPLIT=cfg["split"])
    rec_split = dict(DH=DK // 2 if DK > 64 else DK, SPLIT=DK > 64)
    (bv, nw), (qbk, qbv, qnw), (wbk, wbv, wnw) = cfg["state"], cfg["dqk"], cfg["wy"]
    out = [(kernels._wy_kernel, dtype, base, 4),
           (kernels._state_kernel, dtype, dict(base, **rec_split, BV=kernels._default_block_v(N_BH, DK, DK, dot, False),
                                               HAS_S0=True, FUSED=False), 4)]
    if cfg["intra"] is not None:
        out.append((triton_bwd._bwd_intra_kernel, dtype, dict(base, **split, BV=cfg["intra"][0]), cfg["intra"][1]))
    out += [(triton_bwd._bwd_state_kernel, dtype, dict(base, **split, PRE=cfg["intra"] is not None, BV=bv,
                                                       HAS_DSF=True, HAS_S0=True), nw),
            (triton_bwd._bwd_dqk_kernel, dtype, dict(base, BK=qbk, BV=qbv), qnw),
            (triton_bwd._bwd_wy_kernel, dtype, dict(base, BK=wbk, BV=wbv, NKQ=DK // qbk), wnw)]
    return out


def fp32_forward_launches(DK: int) -> list:
    """The WY, state and read-out kernels of the fp32-input forward (3xTF32) in its unfused layout (``fused=False``:
    the spill-free one, opt-in until timed on a GPU, see ``FP32_FUSED_DEFAULT``) at its default launch sizes."""
    dot = kernels.PRODUCTS["tf32x3"]
    split = dict(DH=DK // 2 if DK > 64 else DK, SPLIT=DK > 64)
    base = dict(DK=DK, DV=DK, C=64, HAS_R=True, DOT=dot, **split)
    return [(kernels._wy_kernel, "fp32", dict(DK=DK, DV=DK, C=64, HAS_R=True, DOT=dot), 4),
            (kernels._state_kernel, "fp32", dict(base, BV=kernels._default_block_v(N_BH, DK, DK, dot, fused=False),
                                                 HAS_S0=True, FUSED=False), 4),
            (kernels._out_kernel, "fp32", dict(base, BV=min(DK, 64)), 4)]


def backward_stats() -> None:
    """The backward kernels (``triton_bwd``) at their default launch sizes, both product modes, Dk = Dv = 64 / 128."""
    for products in ("tf32", "tf32x3"):
        for DK in (64, 128):
            for fn, dtype, consts, nw in backward_launches(products, DK):
                print(compile_stats(fn, dtype, consts, nw, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backward", action="store_true", help="the backward kernels instead of the forward ones")
    if parser.parse_args().backward:
        backward_stats()
        return
    for dtype, products in (("bf16", "bf16"), ("bf16", "tf32"), ("fp32", "tf32x3")):
        dot = kernels.PRODUCTS[products]
        for DK in (64, 128):
            base = dict(DK=DK, DV=DK, C=64, HAS_R=True, DOT=dot)
            print(compile_stats(kernels._wy_kernel, dtype, base, 4, 1))
            for bd, nw in ((32, 4), (32, 8), (64, 4)):  # the whole-chunk WY kernel (wy="chunk"), column block BD
                print(compile_stats(kernels._wy_chunk_kernel, dtype, dict(base, BD=bd), nw, 1))
            wide = DK > 64 and products != "tf32"  # the launcher's default split
            split = dict(DH=DK // 2 if wide else DK, SPLIT=wide)
            for fused, bv, nw in ((True, 16, 4), (True, 32, 4), (True, 32, 8), (False, 16, 4), (False, 32, 4)):
                stages = kernels._default_stages(dot)
                consts = dict(base, **split, BV=bv, HAS_S0=True, FUSED=fused)
                print(compile_stats(kernels._state_kernel, dtype, consts, nw, stages))
            print(compile_stats(kernels._out_kernel, dtype, dict(base, **split, BV=64), 4, 1))
    for DK in (64, 128):
        print(f"fp32 inputs, default launch sizes (unfused read-out), Dk = Dv = {DK}:")
        for fn, dtype, consts, nw in fp32_forward_launches(DK):
            print(compile_stats(fn, dtype, consts, nw, 1))


if __name__ == "__main__":
    main()
