import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny RL models: one intra-op thread avoids OpenMP spin-waits on a shared, oversubscribed CPU
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
