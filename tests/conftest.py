"""Shared fixtures. Weights come from refpose's seeded initialiser, which has its own tests."""
import numpy as np
import pytest

import refpose


@pytest.fixture(scope="session")
def tiny_tensors():
    """Seeded weights of the tiny config (float32, PyTorch layouts)."""
    return refpose.init_weights("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_input():
    """A batch of two random images at the tiny config's input size, NCHW float64."""
    H, W = refpose.get_config("tiny").input_size
    return np.random.default_rng(1).standard_normal((2, 3, H, W))
