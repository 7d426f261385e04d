"""Fixtures for every test folder."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One torch thread: on the shared 2-core machines two threads ran up to 10× slower (contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
