import os

import pytest
import torch
from hypothesis import HealthCheck, settings

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
# CI runs a small profile; the nightly-style run is `pytest -m fuzz --hypothesis-profile thorough`.
settings.register_profile("ci", max_examples=30, deadline=None, suppress_health_check=_SLOW_OK)
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=_SLOW_OK)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(1)  # xdist runs one worker per core; more threads oversubscribe them


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def host_reads(monkeypatch):
    """A list that records every host read (``item``, ``tolist``, ``bool``/``int``/``float`` of a tensor) made from
    ``cortexmem`` code while the test runs; on a GPU each one is a sync. Clear it before the calls under test."""
    import sys

    seen: list[str] = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        orig = getattr(torch.Tensor, name)

        def counted(t, *a, _orig=orig, **kw):
            frame = sys._getframe(1)
            if "/cortexmem/" in frame.f_code.co_filename.replace("\\", "/"):
                seen.append(f"{frame.f_code.co_filename}:{frame.f_lineno}")
            return _orig(t, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return seen

