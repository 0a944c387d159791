"""Shared by the training tests: a small synthetic set."""
import pytest


@pytest.fixture(scope="session")
def small_set(tmp_path_factory):
    """20 synthetic images (50 persons), `refpose synth --seed 1`."""
    from refpose.data.synth import synthesize

    root = tmp_path_factory.mktemp("small") / "ds"
    synthesize(root, 20, seed=1, progress=False)
    return root
