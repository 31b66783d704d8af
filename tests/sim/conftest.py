import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for the test (files opt in with `pytestmark`): tiny models are fastest
    there, and on a busy machine a second thread only adds spin-waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
