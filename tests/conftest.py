"""Shared fixtures. Weights come from refpose's seeded initialiser, which has its own tests."""
import os

import numpy as np
import pytest

# Test modules import torch (and its OpenMP runtime) before refpose's kernels can ask OpenMP not
# to spin; set it here, first, so that the fast path runs as it does in a refpose process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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


@pytest.fixture(scope="session")
def warm_kernels():
    """Run the fast path once per dtype on the tiny config, so that every Numba kernel is
    compiled (or loaded from its on-disk cache) once per session, not inside a timed test."""
    H, W = refpose.get_config("tiny").input_size
    x = np.zeros((1, 3, H, W))
    for dtype in ("float32", "float64"):
        refpose.build("tiny", dtype=dtype, impl="fast")(x)


@pytest.fixture(scope="module")
def single_threaded_blas():
    """One BLAS (and OpenMP) thread for a module: on a shared 2-core machine, BLAS and OpenMP threads that
    spin-wait for each other under load made the parity tests ~8x slower (2 min 19 s vs 18 s)."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """GT, its images (random pixels) and seeded tiny-config weights, in a folder."""
    import cv2

    root = tmp_path_factory.mktemp("run")
    from coco_files import run_gt, write

    gt = run_gt()
    write(root / "gt.json", gt)
    (root / "images").mkdir()
    rng = np.random.default_rng(7)
    for img in gt["images"]:
        pixels = rng.integers(0, 256, (img["height"], img["width"], 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / img["file_name"]), pixels)
    refpose.save_weights(root / "tiny.safetensors", refpose.init_weights("tiny", seed=0), "tiny", trained=False)
    return root
