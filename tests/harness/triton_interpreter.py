"""Run Triton kernels on CPU through Triton's interpreter, with every load and store bounds-checked.

A test module defines ``_run_cases() -> dict`` (JSON-able) that starts with :func:`patch_interpreter`; the
``interpreted`` fixture (``tests/ops/conftest.py``) runs it in a child process with the interpreter on (it must be on
before triton is first imported) and hands the dict to the module's tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch


def refusal(call) -> str:
    """The ``ValueError`` message of ``call()`` (a kernel wrapper refusing bad input), or ``"accepted"``."""
    try:
        call()
    except ValueError as e:
        return str(e)
    return "accepted"


def patch_interpreter() -> None:
    """Work around two interpreter bugs (Triton 3.6, numpy >= 2.3) that compiled kernels do not have; check bounds.

    Scalar kernel arguments are 1-element arrays, which numpy no longer turns into an index (``range(N)``); and
    ``tl.dot`` multiplies bf16 operands as their raw uint16 storage. Every load and store must stay inside one
    tensor argument of the launch (its unmasked addresses): a GPU would read or write out of bounds otherwise.
    """
    import numpy as np
    import triton.language as tl
    import triton.runtime.interpreter as ti

    patch_tensor = ti._patch_lang_tensor

    def patched_tensor(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    create_dot = ti.InterpreterBuilder.create_dot

    def f32(x):
        if x.dtype.scalar != tl.bfloat16:
            return x
        return ti.TensorHandle(ti._convert_float(x.data, tl.bfloat16, tl.float32, None).view(np.float32), tl.float32)

    def patched_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return create_dot(self, f32(a), f32(b), d, input_precision, max_num_imprecise_acc)

    ti._patch_lang_tensor = patched_tensor
    ti.InterpreterBuilder.create_dot = patched_dot
    _check_bounds(ti, np)


def _check_bounds(ti, np) -> None:
    """Raise on any load or store whose active addresses leave every tensor argument of the running launch."""
    regions = []
    init_args = ti.GridExecutor._init_args_hst

    def recorded_init(self, args_dev, kwargs):
        args, kw = init_args(self, args_dev, kwargs)
        regions[:] = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
                      for t in (*args, *kw.values()) if isinstance(t, torch.Tensor)]
        return args, kw

    def check(ptrs, mask):
        addr = ptrs.data[np.broadcast_to(mask.data, ptrs.data.shape).astype(bool)]
        if addr.size:
            lo, hi = int(addr.min()), int(addr.max()) + np.dtype(ti._get_np_dtype(ptrs.get_element_ty())).itemsize
            if not any(a <= lo and hi <= b for a, b in regions):
                raise IndexError(f"access [{lo}, {hi}) outside every tensor argument {regions}")

    load, store = ti.InterpreterBuilder.create_masked_load, ti.InterpreterBuilder.create_masked_store

    def checked_load(self, ptrs, mask, *rest):
        check(ptrs, mask)
        return load(self, ptrs, mask, *rest)

    def checked_store(self, ptrs, value, mask, *rest):
        check(ptrs, mask)
        return store(self, ptrs, value, mask, *rest)

    ti.GridExecutor._init_args_hst = recorded_init
    ti.InterpreterBuilder.create_masked_load = checked_load
    ti.InterpreterBuilder.create_masked_store = checked_store


def bounds_check_catches_overrun() -> bool:
    """The bounds check itself: a load one element past a tensor must raise."""
    import triton
    import triton.language as tl

    @triton.jit
    def copy(X, Y, n):
        i = tl.arange(0, 16)
        tl.store(Y + i, tl.load(X + i, mask=i < n, other=0.0))

    x, y = torch.zeros(8), torch.zeros(16)
    copy[(1,)](x, y, 8)
    try:
        copy[(1,)](x, y, 9)
    except Exception as e:  # noqa: BLE001 - the interpreter wraps the IndexError
        return "outside every tensor argument" in str(e)
    return False


def interpreted_results(test_file: str) -> dict:
    """``_run_cases()`` of the module at ``test_file``, run in a child process with Triton's interpreter on (it must
    be on before triton is first imported)."""
    here, stem = Path(test_file).parent, Path(test_file).stem
    code = f"import json, sys; sys.path.insert(0, {str(here)!r}); import {stem} as t; " \
           "print('RESULT' + json.dumps(t._run_cases()))"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT"):])
