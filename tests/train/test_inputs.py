"""What a run checks before it starts, and what it does with images that turn out bad: the run
folder, the validation inputs, image headers, names that leave the image folder, coordinates."""
import json
import shutil

import pytest

from refpose.cli import main
from train_runs import fails, metrics, train_args

torch = pytest.importorskip("torch", reason="training needs the torch extra")
pytestmark = pytest.mark.torch


def _copy_set(small_set, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(small_set, ds)
    return ds


def test_a_folder_that_holds_no_run_is_refused_and_kept(small_set, tmp_path, capsys):
    # an older run's model and metrics without its last.pt: refused, unless it is emptied
    out = tmp_path / "old"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"someone else's model")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    fails(capsys, train_args(small_set, out), "is not empty and holds no run to continue")
    assert (out / "model.safetensors").read_bytes() == b"someone else's model"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "model.safetensors"]
    (tmp_path / "file").write_text("x")
    fails(capsys, train_args(small_set, tmp_path / "file"), "is a file, not a run folder")


def test_validation_inputs_are_checked_before_training(small_set, tmp_path, capsys):
    argv = train_args(small_set, tmp_path / "run", "--val-ann", small_set / "annotations.json",
                      "--val-images", tmp_path / "nonexist")
    fails(capsys, argv, "nonexist: cannot use as the image directory")
    argv = train_args(small_set, tmp_path / "run", "--val-ann", small_set / "annotations.json",
                      "--val-images", small_set / "images", "--val-boxes", tmp_path / "nodets.json")
    fails(capsys, argv, "nodets.json")
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_makes_up_a_validation_it_missed(small_set, tmp_path, capsys):
    # a run that finished without validating (as one whose validation failed would), resumed with
    # the validation set: it validates at its last step, writes best.pt and records val_AP
    out = tmp_path / "run"
    common = ["--batch", 16, "--epochs", 1]
    assert main(train_args(small_set, out, *common)) == 0
    assert not (out / "best.pt").exists()
    capsys.readouterr()
    assert main(train_args(small_set, out, *common, "--resume", "--val-ann", small_set / "annotations.json",
                           "--val-images", small_set / "images")) == 0
    assert "validation at epoch 1" in capsys.readouterr().err
    assert [r["step"] for r in metrics(out) if "val" in r] == [3]
    assert (out / "best.pt").is_file()
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        assert "val_AP" in f.metadata()


def test_images_with_bad_headers_are_listed_and_bad_decodes_skipped(small_set, tmp_path, capsys):
    # 000003.jpg empty and 000004.jpg not an image: listed when the set is indexed, their persons
    # left out; 000005.jpg cut in half passes the header check, fails to decode when its samples
    # are made, and those samples are skipped with a counted warning
    ds = _copy_set(small_set, tmp_path)
    (ds / "images" / "000003.jpg").write_bytes(b"")
    (ds / "images" / "000004.jpg").write_text("not an image")
    whole = (ds / "images" / "000005.jpg").read_bytes()
    (ds / "images" / "000005.jpg").write_bytes(whole[:len(whole) // 2])
    out = tmp_path / "run"
    assert main(train_args(ds, out, "--batch", 8, "--epochs", 1, "--no-augment")) == 0
    err = capsys.readouterr().err
    assert "000003.jpg: empty file (0 bytes)" in err and "000004.jpg: not an image file" in err
    assert "2 image(s) missing or unreadable" in err
    assert "sample(s) skipped this epoch" in err and "000005.jpg" in err
    info = json.loads((out / "run.json").read_text())
    assert info["data"]["missing_images"] == 2
    epoch_rows = [r for r in metrics(out) if "skipped_samples" in r]
    persons_in_5 = sum(a["image_id"] == 5 for a in json.loads((ds / "annotations.json").read_text())["annotations"])
    assert persons_in_5 > 0
    assert epoch_rows[0]["skipped_samples"] <= persons_in_5 and epoch_rows[0]["skipped_samples"] >= 1


def test_file_names_that_leave_the_image_folder_are_never_opened(small_set, tmp_path, capsys):
    from refpose.train.data import load_train_set

    ds = _copy_set(small_set, tmp_path)
    shutil.copy(ds / "images" / "000001.jpg", tmp_path / "outside.jpg")
    ann = json.loads((ds / "annotations.json").read_text())
    ann["images"][0]["file_name"] = "../../outside.jpg"
    ann["images"][1]["file_name"] = str(tmp_path / "outside.jpg")
    (ds / "annotations.json").write_text(json.dumps(ann))
    data = load_train_set(ds / "annotations.json", ds / "images")
    outside = [m for m in data.missing if "leads outside" in m]
    assert len(outside) == 2
    assert all("outside.jpg" not in p.image for p in data.persons)


def test_coordinates_far_beyond_any_image_are_refused(small_set, tmp_path, capsys):
    ds = _copy_set(small_set, tmp_path)
    ann = json.loads((ds / "annotations.json").read_text())
    ann["annotations"][0]["keypoints"][0] = 1e300
    (ds / "annotations.json").write_text(json.dumps(ann))
    fails(capsys, train_args(ds, tmp_path / "run"), "keypoints[0] = 1e+300 is a coordinate beyond 1,000,000 pixels")
    assert not (tmp_path / "run").exists()


def test_a_run_with_absolute_paths_trains_from_a_deleted_directory(small_set, tmp_path):
    # the optimizer's first step imports torch._dynamo, whose config reads the current directory:
    # the run stopped with "No such file or directory" and no path
    import subprocess
    import sys

    argv = train_args(small_set, tmp_path / "run", "--max-steps", "1", "--batch", "2")
    script = ("import os, sys; os.mkdir('gone'); os.chdir('gone'); os.rmdir(os.path.abspath('.'))\n"
              "from refpose.cli import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=tmp_path,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "run" / "model.safetensors").is_file()
