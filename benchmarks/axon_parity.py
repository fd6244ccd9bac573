"""Parity figures for the axon-family cells: fast paths vs naive loops, trace path vs full BPTT, seq vs step.

Usage: ``PYTHONPATH=src python benchmarks/axon_parity.py``. Prints max absolute errors.
"""

from __future__ import annotations

import torch

import cortexmem as cm
from cortexmem.ops.agalite import agalite_chunked, agalite_naive
from cortexmem.ops.rtu import rtu_naive, rtu_scan
from cortexmem.ops.xl_attention import xl_attention, xl_attention_naive

D = torch.float64


def _maxdiff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def trace_path_vs_bptt(**kw) -> float:
    """Max |grad| difference: three detached calls with the trace path vs one uninterrupted call (fp64)."""
    torch.manual_seed(0)
    cell = cm.AxonCell(cm.AxonCellConfig(hidden_size=6, rtu_size=5, chunk_size=4, activation="tanh", **kw)).double()
    x, tgt = torch.randn(3, 40, 6, dtype=D), torch.randn(3, 40, 6, dtype=D)
    r = torch.rand(3, 40) < 0.08
    r[1, 13] = r[2, 12] = True  # a reset on a call boundary and one just before it
    params = list(cell.parameters())
    full = torch.autograd.grad(((cell(x, resets=r)[0] - tgt) ** 2).sum(), params)
    state = None
    for a, b in ((0, 13), (13, 14), (14, 40)):
        y, state = cell(x[:, a:b], state, resets=r[:, a:b])
        ((y - tgt[:, a:b]) ** 2).sum().backward()
        state = state.detach()
    return _maxdiff([p.grad for p in params], full)


def seq_vs_step(cfg) -> float:
    torch.manual_seed(0)
    cell = cm.build_cell(cfg)
    x = torch.randn(3, 33, cfg.hidden_size)
    r = torch.rand(3, 33) < 0.1
    with torch.no_grad():
        y, _ = cell(x, resets=r)
        st, ys = None, []
        for t in range(33):
            yt, st = cell.step(x[:, t], st, resets=r[:, t])
            ys.append(yt)
    return (y - torch.stack(ys, 1)).abs().max().item()


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    B, T, H = 3, 63, 8
    rs = torch.rand(B, T, generator=g) < 0.1
    cplx = lambda *s: torch.complex(torch.randn(*s, dtype=D), torch.randn(*s, dtype=D))  # noqa: E731
    log_lam = torch.complex(-torch.rand(H, dtype=D) * 0.3, torch.randn(H, dtype=D))
    u, c0 = cplx(B, T, H), cplx(B, H)
    err = _maxdiff([rtu_scan(u, log_lam.exp(), c0, rs)], [rtu_naive(u, log_lam.exp(), c0, rs)[0]])
    print(f"rtu scan vs naive    (fp64, T=63, resets):      {err:.1e}")
    print(f"trace path vs full BPTT grads (fp64, dense):     {trace_path_vs_bptt():.1e}")
    print(f"trace path vs full BPTT grads (fp64, srht):      {trace_path_vs_bptt(use_srht=True):.1e}")
    print(f"  for contrast, truncated BPTT (trace_grad=False): {trace_path_vs_bptt(trace_grad=False):.1e}")
    q, k, v = (torch.randn(B, T, 2, 4, dtype=D) for _ in range(3))
    mem = [torch.randn(B, 5, 2, 4, dtype=D) for _ in range(2)]
    extra = (torch.randn(6, 2, 4, dtype=D), torch.randn(2, 4, dtype=D), torch.randn(2, 4, dtype=D))
    nv = torch.tensor([0, 5, 2])
    err = _maxdiff(xl_attention(q, k, v, *extra, *mem, nv, rs, 8), xl_attention_naive(q, k, v, *extra, *mem, nv, rs))
    print(f"xl blocked vs naive (fp64, T=63, resets):        {err:.1e}")
    nh, Fd, dv, r = 2, 6, 3, 5
    seq = [
        torch.randn(B, T, nh, Fd, dtype=D).relu(),
        torch.randn(B, T, nh, Fd, dtype=D).relu(),
        torch.randn(B, T, nh, dv, dtype=D),
        torch.randn(B, T, nh, dv, dtype=D),
        torch.randn(B, T, nh, Fd, dtype=D),
    ]
    st = [
        torch.randn(B, nh, r, dv, dtype=D),
        torch.randn(B, nh, r, Fd, dtype=D),
        torch.rand(B, nh, Fd, dtype=D),
        torch.tensor([0, 3, 9]),
    ]
    a, b = agalite_chunked(*seq, *st, rs, chunk=8), agalite_naive(*seq, *st, rs)
    print(f"agalite chunked vs naive (fp64, T=63, resets):   {_maxdiff(a[:4], b[:4]):.1e}")
    for name, cfg in {
        "AxonCell": cm.AxonCellConfig(hidden_size=16, chunk_size=8),
        "XLCell": cm.XLCellConfig(hidden_size=16, n_heads=2, mem_len=7, block_size=8),
        "XLCell(axon qkv)": cm.XLCellConfig(hidden_size=16, n_heads=2, mem_len=7, use_axon_qkv=True),
        "AGaLiTeCell": cm.AGaLiTeCellConfig(hidden_size=16, chunk_size=8),
    }.items():
        print(f"{name:18s} sequence vs step (fp32, T=33, resets): {seq_vs_step(cfg):.1e}")


if __name__ == "__main__":
    main()
