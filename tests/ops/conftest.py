"""Fixtures of the op tests."""

import pytest


@pytest.fixture(scope="module")
def interpreted(request):
    """The requesting module's ``_run_cases()``, run under Triton's bounds-checked interpreter in a child process."""
    pytest.importorskip("triton")
    from tests.harness.triton_interpreter import interpreted_results

    return interpreted_results(request.module.__file__)
