"""``cortex doctor``: run every backend that can run here against the op's naive reference; print a table."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..core.backends import list_backends, references


@dataclass
class DoctorRow:
    op: str
    backend: str
    device: str
    dtype: str
    status: str
    max_err_out: float | None = None
    max_err_grad: float | None = None
    detail: str = ""


def _flat(out) -> list[torch.Tensor]:
    return [t for t in (out if isinstance(out, tuple | list) else (out,)) if isinstance(t, torch.Tensor)]


def _run(fn, args, seed=7, forward_only=False):
    args = [a.detach().clone().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor) else a
            for a in args]
    if forward_only:
        with torch.no_grad():
            outs = _flat(fn(*args))
        return [o.double().cpu() for o in outs], []
    outs = _flat(fn(*args))
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.float() * torch.randn(o.shape, generator=g).to(o.device)).sum() for o in outs)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [o.detach().double().cpu() for o in outs], [None if gr is None else gr.double().cpu() for gr in grads]


def run_doctor(devices: list[str] | None = None) -> list[DoctorRow]:
    """Check each registered backend on each available device and dtype against the reference (fp64, CPU)."""
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    refs = references()
    for op, backends in list_backends().items():
        ref = refs.get(op)
        if ref is None:
            continue
        ref_out, ref_grad = _run(ref.fn, ref.make_inputs(torch.device("cpu"), torch.float64))
        for backend in backends:
            for device in devices:
                for dtype in (torch.float32, torch.bfloat16):
                    reason = backend.rejects(device, dtype)
                    row = DoctorRow(op, backend.name, device, str(dtype).removeprefix("torch."), "skipped")
                    if reason:
                        row.detail = reason
                        rows.append(row)
                        continue
                    tol = 1e-4 if dtype == torch.float32 else 5e-2
                    try:
                        out, grad = _run(backend.fn, ref.make_inputs(torch.device(device), dtype),
                                         forward_only=backend.forward_only)
                    except Exception as e:  # noqa: BLE001 - the doctor reports every failure
                        row.status, row.detail = "FAIL", f"{type(e).__name__}: {e}"
                        rows.append(row)
                        continue
                    row.max_err_out = max(_rel_err(a, b) for a, b in zip(out, ref_out, strict=True))
                    if not backend.forward_only:
                        row.max_err_grad = max(
                            (_rel_err(a, b) for a, b in zip(grad, ref_grad, strict=True)
                             if a is not None and b is not None),
                            default=0.0)
                    row.status = "pass" if max(row.max_err_out, row.max_err_grad or 0.0) <= tol else "FAIL"
                    row.detail = f"relative RMS error, tolerance {tol:g}" + (
                        " (forward only)" if backend.forward_only else "")
                    rows.append(row)
    return rows


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-12)).item()


def rows_as_dicts(rows: list[DoctorRow]) -> list[dict]:
    return [asdict(r) for r in rows]
