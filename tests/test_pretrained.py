"""The model a command runs when none is given (refpose/pretrained.py)."""
import os

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

@pytest.fixture
def deleted_cwd(tmp_path):
    """The current directory, deleted (as by `rm -rf` of the folder a shell sits in)."""
    here = os.getcwd()
    gone = tmp_path / "gone"
    gone.mkdir()
    os.chdir(gone)
    gone.rmdir()
    try:
        yield
    finally:
        os.chdir(here)

def test_a_deleted_current_directory_is_passed_over(deleted_cwd):
    """Path.cwd() raised FileNotFoundError: every command failed with "No such file or directory"."""
    from refpose.pretrained import default_model, default_weights_path
    assert default_weights_path("tiny") is None or default_weights_path("tiny").is_absolute()
    assert default_model(config="tiny").config.name == "tiny"

@pytest.mark.parametrize("command", ["infer", "export-onnx"])
def test_commands_with_absolute_paths_run_from_a_deleted_directory(tmp_path, command):
    """torch's MKL cannot load from a deleted current directory either ("Intel oneMKL FATAL ERROR")."""
    import subprocess
    import sys
    import cv2
    import numpy as np

    if command == "export-onnx":
        pytest.importorskip("torch", reason="export-onnx traces the PyTorch twin")
        pytest.importorskip("onnx", reason="export-onnx writes with onnx")
    cv2.imwrite(str(tmp_path / "a.png"), np.full((40, 30, 3), 120, np.uint8))
    refpose.save_weights(tmp_path / "w.safetensors", refpose.init_weights("tiny", 0), "tiny", trained=False)
    argv = {"infer": ["infer", str(tmp_path / "a.png"), "--config", "tiny", "--out", str(tmp_path / "out")],
            "export-onnx": ["export-onnx", str(tmp_path / "w.safetensors"), str(tmp_path / "out" / "w.onnx")]}[command]
    script = ("import os, sys; os.mkdir('gone'); os.chdir('gone'); os.rmdir(os.path.abspath('.'))\n"
              "from refpose.cli import main; code = main(sys.argv[1:])\n"
              "code = code or main(['init', '--config', 'tiny', 'relative.safetensors']) * 10\nsys.exit(code)")
    p = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 20, p.stderr                 # the command ran; the relative output is refused
    assert (tmp_path / "out").is_dir() and os.listdir(tmp_path / "out")
    assert p.stderr.splitlines()[-1] == ("refpose init: error: relative.safetensors: cannot write: the current "
                                         "directory no longer exists")
    assert "Traceback" not in p.stderr and "FATAL" not in p.stderr
