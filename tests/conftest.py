"""Test-wide settings: small thread pools (tests run two at a time on 2 cores), fixed seeds."""
from __future__ import annotations

import os

os.environ.setdefault("FACEKD_NO_PROGRESS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
