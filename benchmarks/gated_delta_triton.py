"""Forward (bf16, no grad) of the gated delta rule: Triton kernel vs the torch chunk path vs fla; prints ratios."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cortexmem.ops.gated_delta import chunk_gated_delta_rule
from cortexmem.ops.gated_delta.triton import triton_gated_delta_rule


def _time(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def bench_shape(B: int, T: int, H: int, D: int, fla_gdr, fla_why: str) -> None:
    """Time every path on one shape and print the table."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k = (F.normalize(torch.randn(B, T, H, D, device="cuda", generator=gen), dim=-1).bfloat16()
            for _ in range(2))
    v = torch.randn(B, T, H, D, device="cuda", generator=gen).bfloat16()
    g = F.logsigmoid(torch.randn(B, T, H, device="cuda", generator=gen) + 3).bfloat16()
    beta = torch.rand(B, T, H, device="cuda", generator=gen).bfloat16()
    with torch.no_grad():
        times = {"torch chunk": _time(lambda: chunk_gated_delta_rule(q, k, v, g, beta))}
        best = None
        for bv in (16, 32, 64):
            for nw in (2, 4, 8):
                if bv > D:
                    continue
                t = _time(lambda bv=bv, nw=nw: triton_gated_delta_rule(q, k, v, g, beta, block_v=bv,
                                                                       num_warps=nw))
                print(f"  B={B} T={T} H={H} D={D} triton block_v={bv} warps={nw}: {t:.3f} ms")
                best = min(best or (t, bv, nw), (t, bv, nw))
        times["triton (default)"] = _time(lambda: triton_gated_delta_rule(q, k, v, g, beta))
        times[f"triton (best: block_v={best[1]} warps={best[2]})"] = best[0]
        if fla_gdr is not None:
            times["fla"] = _time(lambda: fla_gdr(q, k, v, g=g, beta=beta, scale=1.0, output_final_state=True))
            o_f, s_f = fla_gdr(q, k, v, g=g, beta=beta, scale=1.0, output_final_state=True)
            o, s = triton_gated_delta_rule(q, k, v, g, beta)
            err = ((o.float() - o_f.float()).norm() / o_f.float().norm()).item()
            print(f"  rel err triton vs fla (output): {err:.2e}")
        else:
            print(f"  fla not available: {fla_why}")
    print(f"B={B} T={T} H={H} D={D} bf16 forward (no grad):")
    for name, t in times.items():
        ratio = f"  ({t / times['fla']:.2f}x fla)" if "fla" in times else ""
        print(f"  {name:40s} {t:8.3f} ms{ratio}")


def main() -> None:
    fla_gdr, fla_why = None, ""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_gdr
    except Exception as e:  # noqa: BLE001 - report why fla is missing
        fla_why = f"{type(e).__name__}: {e}"
    for B, T, H, D in [(8, 2048, 4, 64), (4, 8192, 16, 128)]:
        bench_shape(B, T, H, D, fla_gdr, fla_why)


if __name__ == "__main__":
    main()
