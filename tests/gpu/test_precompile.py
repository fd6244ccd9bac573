"""The cold first call's parallel precompile: same results as compiling on first launch, every kernel ready after."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu

_SCRIPT = r"""
import json, sys, time, torch, cortexmem
from cortexmem.ops import precompile
calls = []
orig = precompile.precompile
precompile.precompile = lambda fn, dev: calls.append(orig(fn, dev)) or calls[-1]
torch.manual_seed(0)
stack = cortexmem.build_cortex_auto_stack(64, 1, sys.argv[1]).cuda()
x = torch.randn(5, 37, 64, device="cuda", requires_grad=True)
r = torch.rand(5, 37, device="cuda") < 0.1
t0 = time.perf_counter()
y, s = stack(x, None, resets=r)
(y.square().mean() + sum(v.float().square().mean() for v in s.values(True, True))).backward()
torch.cuda.synchronize()
first = time.perf_counter() - t0
grads = [p.grad.double().sum().item() for p in stack.parameters() if p.grad is not None]
print("RESULT" + json.dumps({"y": y.double().sum().item(), "dx": x.grad.double().sum().item(), "grads": grads,
                             "kernels": calls, "first_s": first}))
"""


def _run(pattern: str, tmp_path, precompile: bool) -> dict:
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / ("on" if precompile else "off")),
           "CORTEX_PRECOMPILE": "1" if precompile else "0"}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, pattern], env=env, capture_output=True, text=True,
                          timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT"):])


@pytest.mark.parametrize("pattern", ["S", "AXMS"])
def test_precompiled_first_call_matches_plain_first_call(pattern, tmp_path):
    on, off = _run(pattern, tmp_path, True), _run(pattern, tmp_path, False)
    assert on["kernels"] and on["kernels"][0] >= 3  # forward and backward kernels were requested in the dry pass
    assert off["kernels"] == []
    assert on["y"] == off["y"] and on["dx"] == off["dx"] and on["grads"] == off["grads"]
