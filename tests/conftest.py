import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def fixed_seeds():
    """Every test starts from the same global random state, whatever ran before it."""
    torch.manual_seed(0)
    np.random.seed(0)
    yield
