"""Fixtures of the Ray tests: the images they run and a cluster of two Ray nodes on this machine
(raycluster.py), started once for the session and stopped at its end, also when a test fails."""
import shutil
from pathlib import Path

import pytest

from refpose.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cameraman.jpg"


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """20 images of `refpose synth` (with their annotations) and examples/cameraman.jpg."""
    root = tmp_path_factory.mktemp("data")
    assert main(["synth", str(root / "syn"), "--images", "20", "--seed", "5", "--quiet"]) == 0
    shutil.copy(EXAMPLE, root / "syn" / "images")
    return root / "syn"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    pytest.importorskip("ray", reason="needs Ray Data (pip install -e '.[ray]')")
    from raycluster import TwoNodes

    nodes = TwoNodes(tmp_path_factory.mktemp("cluster"))
    try:
        yield nodes.start()
    finally:
        nodes.stop()
