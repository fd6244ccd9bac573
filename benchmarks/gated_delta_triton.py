"""Forward (bf16, no grad) of the gated delta rule: our Triton kernels vs fla vs the torch chunk path.

Per shape: a small sweep of launch configs (read-out fused in the sequential kernel or parallel over chunks,
V-block, warps, pipeline stages, WY kernel ``blocks`` or ``chunk`` with its column block and warps), the default
config and the default with ``wy="chunk"``, each WY kernel alone (and the difference of their W, U), fla and the
torch path; relative errors of ours vs fla and vs the torch path (and fla vs torch, for scale); the ratio to fla's
time (goal <= 1.3x).

``--shape B,T,H,D`` picks shapes (default: both below), ``--max-configs N`` caps the sweep (0: defaults only),
``--backward`` adds forward + backward and backward-alone timings of our Triton backward (backend
``triton_autograd``), the torch chunk path and fla, with gradient errors vs the torch path in fp32. A
CUDA error kills the process's context, so run shapes you doubt in their own process.
"""

from __future__ import annotations

import argparse
import itertools
import traceback

import torch
import torch.nn.functional as F

from cortexmem.ops.gated_delta import chunk_gated_delta_rule
from cortexmem.ops.gated_delta.triton_fwd import (
    PRODUCTS,
    WY_KERNELS,
    ForwardLaunch,
    _default_block_v,
    _default_stages,
    _pow2_at_least_16,
    default_products,
    gated_delta_forward,
    triton_gated_delta_rule,
    wy_terms,
)

SHAPES = [(8, 2048, 4, 64), (4, 8192, 16, 128)]


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


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _configs(D: int):
    """The sweep, for each product mode: fused read-out over (block_v, warps) and stages at block_v 32; split
    read-out over block_v; WY warps; the whole-chunk WY kernel over its column block and warps."""
    for products in ("tf32", "bf16"):
        for bv in (16, 32, 64):
            if bv > D:
                continue
            for nw in (4, 8):
                yield dict(products=products, fused=True, block_v=bv, num_warps=nw)
            if bv == 32:
                for st in (1, 2):
                    yield dict(products=products, fused=True, block_v=bv, num_warps=4, num_stages=st)
            yield dict(products=products, fused=False, block_v=bv, num_warps=4, out_block_v=min(D, 64),
                       out_num_warps=4)
        for wy in (2, 8):
            yield dict(products=products, wy_num_warps=wy)
        for wy_block in (32, 64):
            if wy_block > D:
                continue
            for nw in (4, 8):
                yield dict(products=products, wy="chunk", wy_block=wy_block, wy_num_warps=nw)


def bench_shape(B: int, T: int, H: int, D: int, fla_gdr, fla_why: str, max_configs: int | None) -> None:
    """Time every path on one shape and print the table."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k = (F.normalize(torch.randn(B, T, H, D, device="cuda", generator=gen), dim=-1).bfloat16()
            for _ in range(2))
    v = torch.randn(B, T, H, D, device="cuda", generator=gen).bfloat16()
    g = F.logsigmoid(torch.randn(B, T, H, device="cuda", generator=gen) + 3).bfloat16()
    beta = torch.rand(B, T, H, device="cuda", generator=gen).bfloat16()
    tag = f"B={B} T={T} H={H} D={D}"
    with torch.no_grad():
        times = {}
        best = None
        o_t, s_t = chunk_gated_delta_rule(q, k, v, g, beta)
        for cfg in itertools.islice(_configs(D), max_configs):
            name = " ".join(f"{key}={val}" for key, val in cfg.items())

            def run(cfg=cfg):
                return gated_delta_forward(q, k, v, g, beta, chunk_size=64, initial_state=None,
                                           output_final_state=True, resets=None, config=ForwardLaunch(**cfg))
            try:
                t = _time(run)
                o_c, s_c = run()
            except Exception as e:  # noqa: BLE001 - a config that does not compile is reported, not fatal
                print(f"  {tag} triton {name}: failed: {type(e).__name__}: {str(e)[:120]}")
                continue
            err = max(_rel(o_c, o_t), _rel(s_c, s_t))
            ok = err <= 2e-2
            print(f"  {tag} triton {name}: {t:.3f} ms, rel err vs torch {err:.1e}{'' if ok else '  WRONG'}")
            if ok and (best is None or t < best[0]):
                best = (t, name)
        for wy in WY_KERNELS:
            times[f"triton (default, wy={wy})"] = _time(
                lambda wy=wy: triton_gated_delta_rule(q, k, v, g, beta, config=ForwardLaunch(wy=wy)))
        if best is not None:
            times[f"triton (best correct: {best[1]})"] = best[0]
        DP = _pow2_at_least_16(D)
        for products, op_dtype in (("tf32", torch.float32), ("bf16", torch.bfloat16)):
            terms = {}
            for wy in WY_KERNELS:
                def wy_run(wy=wy, products=products, op_dtype=op_dtype):
                    return wy_terms(k, v, g, beta, None, 64, DP, DP, op_dtype, products=products, wy=wy)
                times[f"  WY kernel alone, wy={wy} ({products} products)"] = _time(wy_run)
                terms[wy] = wy_run()
            (w_b, u_b), (w_c, u_c) = terms["blocks"], terms["chunk"]
            print(f"  rel diff WY chunk vs blocks ({products} products): W {_rel(w_c, w_b):.2e}, "
                  f"U {_rel(u_c, u_b):.2e}")
        times["torch chunk"] = _time(lambda: chunk_gated_delta_rule(q, k, v, g, beta), reps=5)
        o, s = triton_gated_delta_rule(q, k, v, g, beta)
        print(f"  rel err triton vs torch chunk: output {_rel(o, o_t):.2e}, final state {_rel(s, s_t):.2e}")
        o_s, s_s = gated_delta_forward(q, k, v, g, beta, chunk_size=64, initial_state=None, output_final_state=True,
                                       resets=None, config=ForwardLaunch(fused=False))
        print(f"  rel err split vs fused read-out: output {_rel(o_s, o):.2e}, final state {_rel(s_s, s):.2e}")
        if fla_gdr is not None:
            def fla():
                return fla_gdr(q, k, v, g=g, beta=beta, scale=1.0, output_final_state=True)

            try:
                times["fla"] = _time(fla)
                o_f, s_f = fla()
                print(f"  rel err triton vs fla: output {_rel(o, o_f):.2e}, final state {_rel(s, s_f):.2e}")
                print(f"  rel err fla vs torch chunk: output {_rel(o_f, o_t):.2e}, final state {_rel(s_f, s_t):.2e}")
            except Exception as e:  # noqa: BLE001 - report why fla failed, keep our figures
                print(f"  fla failed: {type(e).__name__}: {str(e)[:200]}")
        else:
            print(f"  fla not available: {fla_why}")
    print(f"{tag} bf16 forward (no grad):")
    for name, t in times.items():
        ratio = f"  ({t / times['fla']:.2f}x fla)" if "fla" in times else ""
        print(f"  {name:60s} {t:8.3f} ms{ratio}")


def bench_backward_shape(B: int, T: int, H: int, D: int, fla_gdr, fla_why: str) -> None:
    """bf16 forward + backward (gradients of q, k, v, g, beta, initial state) and the backward alone: our Triton
    backward (backend ``triton_autograd``) vs the torch chunk path vs fla; gradient errors vs torch (fp32)."""
    from cortexmem.ops.gated_delta.triton_bwd import triton_gated_delta_rule_autograd

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k = (F.normalize(torch.randn(B, T, H, D, device="cuda", generator=gen), dim=-1) for _ in range(2))
    v = torch.randn(B, T, H, D, device="cuda", generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, device="cuda", generator=gen) + 3)
    beta = torch.rand(B, T, H, device="cuda", generator=gen)
    s0 = torch.randn(B, H, D, D, device="cuda", generator=gen)
    do = torch.randn(B, T, H, D, device="cuda", generator=gen).bfloat16()
    inputs = [t.bfloat16() for t in (q, k, v, g, beta, s0)]
    paths = {"triton fwd+bwd": lambda *a: triton_gated_delta_rule_autograd(*a[:5], initial_state=a[5]),
             "torch chunk": lambda *a: chunk_gated_delta_rule(*a[:5], initial_state=a[5])}
    if fla_gdr is not None:
        paths["fla"] = lambda *a: fla_gdr(*a[:3], g=a[3], beta=a[4], scale=1.0, initial_state=a[5],
                                          output_final_state=True)
    tag = f"B={B} T={T} H={H} D={D}"
    times, grads = {}, {}
    for name, fn in paths.items():
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]

        def fwd_bwd(fn=fn, leaves=leaves):
            return torch.autograd.grad(fn(*leaves)[0], leaves, do)
        try:
            times[f"{name}: forward + backward"] = _time(fwd_bwd, reps=5 if name == "torch chunk" else 20)
            o = fn(*leaves)[0]
            times[f"{name}: backward alone"] = _time(lambda o=o, leaves=leaves: torch.autograd.grad(
                o, leaves, do, retain_graph=True), reps=5 if name == "torch chunk" else 20)
            grads[name] = fwd_bwd()
        except Exception as e:  # noqa: BLE001 - report the failure (fla's backward on Hopper), keep the others
            print(f"  {tag} {name} failed: {type(e).__name__}: {str(e)[:200]}")
    if fla_gdr is None:
        print(f"  fla not available: {fla_why}")
    names = ("dq", "dk", "dv", "dg", "dbeta", "ds0")
    ref = [t.float().detach().requires_grad_(True) for t in inputs]
    ref_grads = torch.autograd.grad(chunk_gated_delta_rule(*ref[:5], initial_state=ref[5])[0], ref, do.float())
    for name, gr in grads.items():
        errs = ", ".join(f"{n} {_rel(a, b):.1e}" for n, a, b in zip(names, gr, ref_grads, strict=True))
        print(f"  rel err of {name} gradients vs torch chunk (fp32): {errs}")
    print(f"{tag} bf16 forward + backward:")
    for name, t in times.items():
        peer = times.get("fla: " + name.split(": ")[1])
        print(f"  {name:60s} {t:8.3f} ms" + (f"  ({t / peer:.2f}x fla)" if peer else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", action="append", help="B,T,H,D (repeatable)")
    parser.add_argument("--max-configs", type=int, default=None, help="cap on the launch-config sweep per shape")
    parser.add_argument("--backward", action="store_true",
                        help="also time forward + backward and the backward alone (Triton bwd vs torch vs fla)")
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in sh.split(",")) for sh in args.shape] if args.shape else SHAPES
    fla_gdr, fla_why = None, ""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_gdr
    except Exception as e:  # noqa: BLE001 - report why fla is missing
        fla_why = f"{type(e).__name__}: {e}"
    import triton

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    for B, T, H, D in shapes:
        DP = _pow2_at_least_16(D)
        products = default_products(torch.bfloat16, -(-T // 64))
        dot = PRODUCTS[products]
        bv = _default_block_v(B * H, DP, DP, dot)
        print(f"B={B} T={T} H={H} D={D}: default {products} products, fused read-out, "
              f"block_v={bv}, num_warps=4, num_stages={_default_stages(dot)}")
        try:
            bench_shape(B, T, H, D, fla_gdr, fla_why, args.max_configs)
            if args.backward:
                bench_backward_shape(B, T, H, D, fla_gdr, fla_why)
        except Exception:  # noqa: BLE001 - print the failure, go on with the next shape
            traceback.print_exc()


if __name__ == "__main__":
    main()
