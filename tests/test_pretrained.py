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
