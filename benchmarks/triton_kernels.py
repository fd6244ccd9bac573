"""GPU: forward+backward of the Triton sLSTM / RTU-scan / mLSTM kernels vs the PyTorch backends, op and cell level.

    PYTHONPATH=src python benchmarks/triton_kernels.py [--batch 32 --steps 256 --hidden 256 --heads 4 --repeats 20]

Prints milliseconds (median of ``--repeats`` after warm-up, CUDA-synchronised) and the torch/triton ratios.
Also the first call (Triton compile included) of each kernel. The mLSTM rows run at head sizes dk=64, dv=128
(``--mlstm-dk/--mlstm-dv``; the cell with ``hidden = 2 * heads * dk``), chunk 64; the mLSTM Triton backend is
``auto``'s choice on CUDA for sequences since these rows were measured on an H100.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from cortexmem import AxonCellConfig, build_cell, mLSTMCellConfig, sLSTMCellConfig
from cortexmem.ops.mlstm import mlstm
from cortexmem.ops.rtu import rtu
from cortexmem.ops.slstm import slstm


def _time(fn: Callable[[], None], repeats: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _first_call(fn: Callable[[], None]) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def _fwd_bwd(fn: Callable[[], tuple], leaves: list[torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        out = fn()
        outs = out if isinstance(out, tuple | list) else (out,)
        loss = sum(o.float().square().mean() for o in outs if o.requires_grad)
        torch.autograd.grad(loss, leaves)
    return run


def _slstm_op(B: int, T: int, H: int, NH: int, backend: str):
    dh = H // NH
    wx = torch.randn(B, T, 4, H, device="cuda", requires_grad=True)
    R = (torch.randn(4, NH, dh, dh, device="cuda") / dh**0.5).requires_grad_()
    st = [torch.zeros(B, H, device="cuda", requires_grad=True) for _ in range(4)]

    def fn():
        h_seq, finals = slstm(wx, R, initial_state=st, backend=backend)
        return (h_seq, *finals)
    return _fwd_bwd(fn, [wx, R, *st])


def _rtu_op(B: int, T: int, H: int, backend: str):
    u = torch.randn(B, T, H, device="cuda", dtype=torch.complex64, requires_grad=True)
    lam = torch.polar(torch.rand(H, device="cuda") * 0.1 + 0.9, torch.rand(H, device="cuda")).requires_grad_()
    c0 = torch.zeros(B, H, device="cuda", dtype=torch.complex64, requires_grad=True)
    resets = torch.rand(B, T, device="cuda") < 0.01
    return _fwd_bwd(lambda: torch.view_as_real(rtu(u, lam, initial_state=c0, resets=resets, output_final_state=False,
                                                   backend=backend)[0]), [u, lam, c0])


def _mlstm_op(B: int, T: int, NH: int, dk: int, dv: int, backend: str):
    q = torch.randn(B, T, NH, dk, device="cuda", requires_grad=True)
    k = (torch.randn(B, T, NH, dk, device="cuda") / dk**0.5).requires_grad_()
    v = torch.randn(B, T, NH, dv, device="cuda", requires_grad=True)
    log_i = torch.randn(B, T, NH, device="cuda", requires_grad=True)
    log_f = torch.nn.functional.logsigmoid(torch.randn(B, T, NH, device="cuda") + 3).requires_grad_()
    C0 = torch.zeros(B, NH, dk, dv, device="cuda", requires_grad=True)
    n0 = torch.zeros(B, NH, dk, device="cuda", requires_grad=True)
    m0 = torch.zeros(B, NH, device="cuda", requires_grad=True)
    resets = torch.rand(B, T, device="cuda") < 0.01
    leaves = [q, k, v, log_i, log_f, C0, n0, m0]

    def fn():
        h, finals = mlstm(q, k, v, log_i, log_f, initial_state=(C0, n0, m0), resets=resets, chunk_size=64,
                          backend=backend)
        return (h, *finals)
    return _fwd_bwd(fn, leaves)


def _cell(config, B: int, T: int, H: int):
    cell = build_cell(config).cuda()
    x = torch.randn(B, T, H, device="cuda")

    def run() -> None:
        cell.zero_grad(set_to_none=True)
        y, _ = cell(x)
        y.square().mean().backward()
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--mlstm-dk", type=int, default=64)
    p.add_argument("--mlstm-dv", type=int, default=128)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    B, T, H = a.batch, a.steps, a.hidden
    Hm = 2 * a.heads * a.mlstm_dk  # the mLSTM cell's width: qk_dim_factor 0.5 gives dk per head
    print(f"B={B} T={T} d={H} fp32, {torch.cuda.get_device_name()}, forward+backward ms (median of {a.repeats})")
    cases = {
        "slstm op": lambda be: _slstm_op(B, T, H, a.heads, be),
        "rtu scan op": lambda be: _rtu_op(B, T, H, be),
        "sLSTMCell": lambda be: _cell(sLSTMCellConfig(hidden_size=H, num_heads=a.heads, backend=be), B, T, H),
        "AxonCell": lambda be: _cell(AxonCellConfig(hidden_size=H, backend=be), B, T, H),
        "mlstm op": lambda be: _mlstm_op(B, T, a.heads, a.mlstm_dk, a.mlstm_dv, be),
        "mLSTMCell": lambda be: _cell(mLSTMCellConfig(hidden_size=Hm, num_heads=a.heads, chunk_size=64,
                                                      v_dim_factor=a.mlstm_dv / (2 * a.mlstm_dk), backend=be),
                                      B, T, Hm),
    }
    for name, make in cases.items():
        ms = {}
        for be in ("triton", "torch"):
            run = make(be)
            first = _first_call(run)
            ms[be] = _time(run, a.repeats)
            print(f"  {name:12s} {be:6s} {ms[be]:9.3f} ms   first call {first:6.2f} s")
        print(f"  {name:12s} speed-up torch/triton = {ms['torch'] / ms['triton']:.2f}x")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
