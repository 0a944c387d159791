import pytest

HELDOUT = "tests/assets/synth_heldout"


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory):
    """Four of the held-out images, as a calibration folder."""
    import shutil
    from pathlib import Path

    d = tmp_path_factory.mktemp("calib")
    for name in sorted(Path(HELDOUT, "images").iterdir())[:4]:
        shutil.copy(name, d / name.name)
    return str(d)


@pytest.fixture(scope="session")
def int8_file(tmp_path_factory, calib_dir):
    """tiny-synthetic quantized (min-max) on four images."""
    from refpose.quant.quantize import quantize_file

    path = str(tmp_path_factory.mktemp("int8") / "tiny.int8.safetensors")
    quantize_file("tiny-synthetic", calib_dir, path, method="minmax")
    return path
