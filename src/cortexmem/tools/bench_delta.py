"""``cortex bench``'s gated-delta rows: ours (backend by the registry) vs fla's chunk kernel and causal SDPA (flash),
bf16, at the speed goals' two shapes."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from .bench import BenchRow, time_call

GATED_DELTA_SHAPES = ((8, 2048, 4, 64), (4, 8192, 16, 128))  # (B, T, H, D)


def gated_delta_shape_name(B: int, T: int, H: int, D: int) -> str:
    return f"B{B}xT{T}xH{H}xD{D}"


def gated_delta_rows(dev: torch.device, repeats: int) -> list[BenchRow]:
    """Ours (backend by the registry) vs fla and causal SDPA (flash) at the issue's two bf16 shapes; forward+backward
    gives every input (q, k, v, g, beta) a gradient, as training does."""
    rows = []
    try:
        ours = importlib.import_module("cortexmem.ops.gated_delta").gated_delta_rule
    except Exception as e:  # noqa: BLE001
        return [BenchRow("gated_delta:ours", "ours", status=f"not available ({type(e).__name__}: {e})")]
    try:
        fla = importlib.import_module("fla.ops.gated_delta_rule").chunk_gated_delta_rule
    except Exception as e:  # noqa: BLE001
        fla, fla_why = None, f"not installed ({type(e).__name__})"
    for B, T, H, D in GATED_DELTA_SHAPES:
        g = torch.Generator(device=dev).manual_seed(0)
        q = nn.functional.normalize(torch.randn(B, T, H, D, device=dev, generator=g), dim=-1).bfloat16()
        k = nn.functional.normalize(torch.randn(B, T, H, D, device=dev, generator=g), dim=-1).bfloat16()
        v = torch.randn(B, T, H, D, device=dev, generator=g).bfloat16()
        alpha = torch.rand(B, T, H, device=dev, generator=g).mul(0.1).add(0.89).bfloat16()
        gl = alpha.float().log().bfloat16()  # both ops take the LOG decay
        beta = torch.rand(B, T, H, device=dev, generator=g).bfloat16()
        shape = gated_delta_shape_name(B, T, H, D)

        def fwd_bwd(fn, **kw):
            leaves = [t.clone().requires_grad_(True) for t in (q, k, v, gl, beta)]

            def run():
                fn(*leaves, **kw)[0].float().sum().backward()
            return run

        row = BenchRow(f"gated_delta:ours {shape}", "ours")
        try:
            with torch.no_grad():
                row.extra["fwd_ms"] = time_call(lambda: ours(q, k, v, gl, beta), dev, repeats)
            torch.cuda.reset_peak_memory_stats(dev)
            row.fwd_bwd_ms = time_call(fwd_bwd(ours), dev, repeats)
            row.peak_mem_mb = torch.cuda.max_memory_allocated(dev) / 2**20
        except Exception as e:  # noqa: BLE001
            row.status = f"failed: {type(e).__name__}: {e}"[:300]
        rows.append(row)
        peer = BenchRow(f"gated_delta:fla {shape}", "peer")
        if fla is None:
            peer.status = fla_why
        else:
            try:
                with torch.no_grad():
                    peer.extra["fwd_ms"] = time_call(lambda: fla(q, k, v, gl, beta, scale=1.0), dev, repeats)
            except Exception as e:  # noqa: BLE001
                peer.status = f"failed: {type(e).__name__}: {e}"[:300]
            try:
                peer.fwd_bwd_ms = time_call(fwd_bwd(fla, scale=1.0), dev, repeats)
            except Exception as e:  # noqa: BLE001 - fla's backward refuses to run on Hopper with Triton 3.6
                peer.extra["backward"] = f"failed: {type(e).__name__}: {e}"[:200]
        rows.append(peer)
        rows.append(sdpa_row(shape, B, T, H, D, dev, repeats))
    return rows


def sdpa_row(shape: str, B: int, T: int, H: int, D: int, dev: torch.device, repeats: int) -> BenchRow:
    """Causal scaled-dot-product attention (flash on a GPU), bf16, forward+backward of q, k and v."""
    row = BenchRow(f"peer:sdpa-causal {shape}", "peer")
    try:
        gen = torch.Generator(device=dev).manual_seed(1)
        qkv = [torch.randn(B, H, T, D, device=dev, generator=gen).bfloat16().requires_grad_(True) for _ in range(3)]

        def run():
            nn.functional.scaled_dot_product_attention(*qkv, is_causal=True).float().sum().backward()

        with torch.no_grad():
            row.extra["fwd_ms"] = time_call(lambda: nn.functional.scaled_dot_product_attention(*qkv, is_causal=True),
                                        dev, repeats)
        row.fwd_bwd_ms = time_call(run, dev, repeats)
    except Exception as e:  # noqa: BLE001
        row.status = f"failed: {type(e).__name__}: {e}"[:300]
    return row
