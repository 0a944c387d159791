"""The model a command runs when none is given (refpose/pretrained.py)."""
import pytest

import refpose
from refpose.pretrained import default_model, default_weights_path


def test_default_model_prefers_the_weights_file_then_seeded_init(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if default_weights_path("tiny") is not None:
        pytest.skip("the source checkout has its own weights/tiny.safetensors")
    model = default_model(config="tiny")
    assert model.trained is False and model.config.name == "tiny"
    refpose.save_weights(tmp_path / "weights" / "tiny.safetensors", refpose.init_weights("tiny", 5), "tiny",
                         trained=True)
    model = default_model(config="tiny")
    assert model.trained is True and model.source.endswith("tiny.safetensors")
    assert default_model(weights=tmp_path / "weights" / "tiny.safetensors").config.name == "tiny"


def test_shipped_weights_load_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    from refpose.cli import main

    monkeypatch.chdir(tmp_path)                         # no weights/ folder here
    model = refpose.load("tiny-synthetic")
    assert model.trained is True and model.config.name == "tiny"
    image = tmp_path / "a.png"
    import cv2
    import numpy as np
    cv2.imwrite(str(image), np.full((96, 72, 3), 127, np.uint8))
    assert main(["infer", str(image), "--weights", "tiny-synthetic", "--out", str(tmp_path / "out")]) == 0
    assert "untrained" not in capsys.readouterr().err
    with pytest.raises(refpose.WeightsError, match="nor the name of weights shipped with refpose: tiny-synthetic"):
        refpose.load("tiny-synthetc")


@pytest.mark.slow
def test_the_shipped_weights_are_in_the_built_package(tmp_path):
    """`pip install .` installs what a wheel holds: the weights must be in it, not only in the checkout."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(root)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("refpose-*.whl")
    assert "refpose/assets/tiny-synthetic.safetensors" in zipfile.ZipFile(wheel).namelist()
