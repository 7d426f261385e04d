"""Every model test starts from the same seed (single-threaded: tests/conftest.py)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
