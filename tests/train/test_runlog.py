"""What a run writes: the data-wait figures, the mean loss, `trained: false` without a step, a
validation whose figures are undefined (refpose.train.runlog, refpose.train.loop)."""
import json
import time

import pytest

from refpose.cli import main
from train_runs import metrics, train_args

torch = pytest.importorskip("torch", reason="training needs the torch extra")
pytestmark = pytest.mark.torch


def test_the_time_spent_waiting_for_data_is_in_metrics(small_set, tmp_path, monkeypatch):
    # every sample made 40 ms slower (in-process loading): 48 samples in an epoch of 3 steps of
    # 16 make the training process wait at least 1.92 s for its batches
    import refpose.train.loop as loop

    make = loop.PersonCrops.__getitem__
    monkeypatch.setattr(loop.PersonCrops, "__getitem__", lambda self, item: (time.sleep(0.04), make(self, item))[1])
    out = tmp_path / "run"
    assert main(train_args(small_set, out, "--batch", 16, "--epochs", 1)) == 0
    row, = [r for r in metrics(out) if "data_wait_s" in r]
    assert row["data_wait_s"] >= 48 * 0.04
    assert row["data_wait_s"] <= row["epoch_s"]
    assert row["data_wait_fraction"] == pytest.approx(row["data_wait_s"] / row["epoch_s"])


def test_a_run_that_made_no_step_writes_untrained_weights(small_set, tmp_path):
    # the command refuses --max-steps 0 (test_settings); from Python a run may still make no step
    from refpose.train.loop import train
    from refpose.train.settings import TrainSettings

    out = tmp_path / "run"
    train(TrainSettings("tiny", str(small_set / "annotations.json"), str(small_set / "images"), str(out),
                        batch=16, epochs=1, max_steps=0, workers=0, progress=False))
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        assert f.metadata()["trained"] == "false"


def test_a_validation_without_persons_prints_n_a(small_set, tmp_path, capsys):
    # a validation set whose persons have no labelled joint: pycocotools' figures are undefined (None)
    ann = json.loads((small_set / "annotations.json").read_text())
    for a in ann["annotations"]:
        a["keypoints"] = [0] * 51
        a["num_keypoints"] = 0
    val = tmp_path / "val.json"
    val.write_text(json.dumps(ann))
    out = tmp_path / "run"
    assert main(train_args(small_set, out, "--batch", 16, "--epochs", 1, "--val-ann", val,
                           "--val-images", small_set / "images")) == 0
    assert "validation at epoch 1: AP n/a" in capsys.readouterr().err
    assert [r["val"]["AP"] for r in metrics(out) if "val" in r] == [None]


def test_bf16_mixed_precision_trains_on_the_cpu(small_set, tmp_path):
    out = tmp_path / "run"
    # bfloat16 autocast on the CPU (emulated without AVX512-BF16, ~2 crops/s: two steps of 4); no
    # GradScaler, finite losses
    assert main(train_args(small_set, out, "--batch", 4, "--epochs", 1, "--max-steps", 2, "--amp", "bf16",
                           "--log-every", 1)) == 0
    rows = [r for r in metrics(out) if "loss" in r]
    assert len(rows) == 2 and all(0 < r["loss"] < 1 for r in rows) and "amp_scale" not in rows[0]
