import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # these tests run many tiny ops in sequence; a second intra-op thread only adds sync stalls on a busy CPU
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
