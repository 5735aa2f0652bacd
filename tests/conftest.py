import numpy as np
import pytest
import torch

import os

# under pytest-xdist (make test runs one worker per core) each worker computes on one thread: two workers of two
# threads each on two cores would oversubscribe them
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, torch.get_num_threads()))
# tests build quadrature tables themselves (no table stored on disk by an earlier run decides a test's path);
# tests/test_table_cache.py turns the cache on in folders of its own
os.environ["INFINET_CACHE"] = "off"


@pytest.fixture(autouse=True)
def fixed_seeds():
    """Every test starts from the same global random state, whatever ran before it."""
    torch.manual_seed(0)
    np.random.seed(0)
    yield
