"""benchmarks/gpu_tests.py tells the test that breaks a process from the ones that fail only after it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _runner():
    spec = importlib.util.spec_from_file_location("gpu_tests", ROOT / "benchmarks" / "gpu_tests.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_runner_separates_origin_from_cascade(tmp_path):
    # a stand-in for a CUDA error: the first test poisons the process, the next one fails only after it
    (tmp_path / "test_poison.py").write_text(
        "import os\n"
        "def test_a_breaks():\n"
        "    os.environ['POISONED'] = '1'\n"
        "    raise RuntimeError('CUDA error: an illegal memory access was encountered')\n"
        "def test_b_victim():\n"
        "    assert os.environ.get('POISONED') != '1'\n"
        "def test_c_fine():\n"
        "    assert True\n",
        encoding="utf-8")
    mod = _runner()
    res = mod.run_file(str(tmp_path / "test_poison.py"), timeout=120, out_dir=tmp_path, marker=None)
    assert res["returncode"] == 1 and res["cuda_error"]
    assert "2 failed, 1 passed" in res["summary"]
    verdicts = {k.split("::")[-1]: v for k, v in res["alone"].items()}
    assert verdicts == {"test_a_breaks": "fails alone with a CUDA error", "test_b_victim": "passes alone (cascade)"}
    assert (tmp_path / "test_poison.log").read_text(encoding="utf-8")


def test_runner_spreads_a_file_over_workers(tmp_path):
    (tmp_path / "test_many.py").write_text(
        "import os\n"
        "import pytest\n"
        "@pytest.mark.parametrize('i', range(4))\n"
        "def test_worker(i):\n"
        "    assert os.environ.get('PYTEST_XDIST_WORKER', '').startswith('gw')\n",
        encoding="utf-8")
    res = _runner().run_file(str(tmp_path / "test_many.py"), timeout=120, marker=None, workers=2)
    assert res["returncode"] == 0 and "4 passed" in res["summary"], res


def test_runner_finds_every_gpu_test_file():
    files = _runner().gpu_test_files()
    assert "tests/gpu/test_gated_delta_triton.py" in files and "tests/gpu/test_graphed.py" in files
    assert all(Path(ROOT / f).is_file() for f in files)
