"""Tests of `refpose infer` (refpose/cli/infer.py): outputs, bad input, batches.

The command runs in-process through `refpose.cli.main` (the same function the console script
calls) on the tiny config; one test runs the real console entry point in a subprocess, and a
slow one runs the README's main command as written.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import refpose
from refpose.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cameraman.jpg"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Tiny-config weights marked trained, so that no 'untrained' warning joins stderr."""
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    refpose.save_weights(path, refpose.init_weights("tiny", seed=0), "tiny", trained=True)
    return str(path)


@pytest.fixture
def photos(tmp_path):
    """Two small photos-to-be (random content) in PNG and JPEG, of different sizes."""
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), rng.integers(0, 256, (120, 90, 3), dtype=np.uint8))
    cv2.imwrite(str(d / "000000000785.jpg"), rng.integers(0, 256, (70, 150, 3), dtype=np.uint8))
    return d


def run(args, capfd):
    code = main(["infer", *map(str, args)])
    out, err = capfd.readouterr()
    return code, out, err


def test_example_end_to_end(tmp_path, capfd):
    out = tmp_path / "out"
    code, stdout, stderr = run([EXAMPLE, "--config", "tiny", "--out", out, "--json"], capfd)
    assert code == 0
    assert "untrained" in stderr and len(stderr.splitlines()) == 1        # the one-line warning
    H, W = cv2.imread(str(EXAMPLE)).shape[:2]
    records = json.loads((out / "cameraman.pose.json").read_text())
    assert records == json.loads(stdout)                                   # --json prints the same
    assert len(records) == 1
    r = records[0]
    assert r["file_name"] == "cameraman.jpg" and r["category_id"] == 1
    assert r["bbox"] == [0.0, 0.0, float(W), float(H)]                    # no boxes: the whole image
    kp = np.array(r["keypoints"]).reshape(17, 3)
    assert np.isfinite(kp).all()
    assert (kp[:, 0] >= 0).all() and (kp[:, 0] <= W - 1).all()
    assert (kp[:, 1] >= 0).all() and (kp[:, 1] <= H - 1).all()
    assert isinstance(r["score"], float)
    png = cv2.imread(str(out / "cameraman.pose.png"))
    assert png.shape == (H, W, 3)
    assert sorted(os.listdir(out)) == ["cameraman.pose.json", "cameraman.pose.png"]   # no temporaries


def test_boxes_flip_dark_heatmaps(photos, tmp_path, capfd, tiny_weights):
    out = tmp_path / "out"
    code, stdout, stderr = run([photos / "a.png", "--weights", tiny_weights, "--bbox", "10,20,40,60",
                                "--bbox", "0,0,90,120", "--flip", "--dark", "--heatmaps", "--out", out], capfd)
    assert code == 0 and stderr == ""
    assert "a.png: 2 persons" in stdout
    records = json.loads((out / "a.pose.json").read_text())
    assert [r["bbox"] for r in records] == [[10, 20, 40, 60], [0, 0, 90, 120]]
    assert all(len(r["keypoints"]) == 51 for r in records)
    # the montage: 18 tiles (crop + 17 heatmaps) of the tiny input 128x96 with a 16-px title, 6 per row
    montage = cv2.imread(str(out / "a.person1.heatmaps.png"))
    assert montage.shape == (3 * (128 + 16), 6 * 96, 3)
    assert sorted(os.listdir(out)) == ["a.person0.heatmaps.png", "a.person1.heatmaps.png",
                                       "a.pose.json", "a.pose.png"]


def test_detections_file_and_image_ids(photos, tmp_path, capfd, tiny_weights):
    dets = [{"image_id": 785, "category_id": 1, "bbox": [5, 5, 30, 50], "score": 0.9},
            {"image_id": 785, "category_id": 1, "bbox": [60, 5, 30, 50], "score": 0.2},   # under --box-thr
            {"image_id": 785, "category_id": 3, "bbox": [60, 5, 30, 50], "score": 0.9}]   # not a person
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    out = tmp_path / "out"
    code, stdout, stderr = run([photos, "--weights", tiny_weights, "--boxes", path, "--box-thr", "0.5",
                                "--out", out], capfd)
    assert code == 0
    records = json.loads((out / "000000000785.pose.json").read_text())
    assert [(r["image_id"], r["bbox"]) for r in records] == [(785, [5, 5, 30, 50])]
    s = np.array(records[0]["keypoints"][2::3])
    expected = 0.9 * s[s > 0.2].mean() if (s > 0.2).any() else 0.0   # box score x mean keypoint score > 0.2
    assert records[0]["score"] == pytest.approx(expected, rel=1e-12)
    # a.png has no detections: no person, said on stderr, still written (empty)
    assert json.loads((out / "a.pose.json").read_text()) == []
    assert "a.png" in stderr and "no person box" in stderr


def test_batch_with_a_bad_image_goes_on(photos, tmp_path, capfd, tiny_weights):
    bad = photos / "broken.jpg"
    bad.write_bytes(b"")
    out = tmp_path / "out"
    code, stdout, stderr = run([photos / "a.png", bad, photos / "000000000785.jpg", "--weights", tiny_weights,
                                "--out", out], capfd)
    assert code == 1
    assert stderr.splitlines() == [f"refpose infer: error: {bad}: empty file (0 bytes)"]
    assert sorted(os.listdir(out)) == ["000000000785.pose.json", "000000000785.pose.png",
                                       "a.pose.json", "a.pose.png"]


def test_a_refused_box_fails_its_image_only(photos, tmp_path, capfd, tiny_weights):
    # the images' crops share forward passes; a box outside a.png (90 px wide) but inside
    # 000000000785.jpg (150 px wide) fails a.png alone
    out = tmp_path / "out"
    code, stdout, stderr = run([photos / "a.png", photos / "000000000785.jpg", "--bbox", "100,5,20,20",
                                "--weights", tiny_weights, "--out", out], capfd)
    assert code == 1
    lines = stderr.splitlines()
    assert len(lines) == 1 and f"{photos / 'a.png'}: box" in lines[0] and "outside" in lines[0]
    assert sorted(os.listdir(out)) == ["000000000785.pose.json", "000000000785.pose.png"]
    records = json.loads((out / "000000000785.pose.json").read_text())
    assert [(r["image_id"], r["bbox"]) for r in records] == [(785, [100, 5, 20, 20])]


def _bad_weights(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x00" * 100)
    return p


def _wrong_config_weights(tmp_path):
    p = tmp_path / "other.safetensors"
    t = refpose.init_weights("tiny")
    t.pop("head.bias")
    np.savez(p.with_suffix(".npz"), **t)
    return p.with_suffix(".npz")


BAD_INPUTS = {
    # name: (files to make in the input dir, extra arguments, the file the message must name)
    "missing": ({}, ["{d}/nope.jpg"], "nope.jpg"),
    "zero-byte": ({"z.jpg": b""}, ["{d}/z.jpg"], "z.jpg"),
    "truncated": ({"t.jpg": "truncated"}, ["{d}/t.jpg"], "t.jpg"),
    "not an image": ({"n.png": b"just some text\n"}, ["{d}/n.png"], "n.png"),
    "box outside": ({"ok.png": "ok"}, ["{d}/ok.png", "--bbox", "500,10,20,20"], "ok.png"),
    "box zero area": ({"ok.png": "ok"}, ["{d}/ok.png", "--bbox", "10,10,0,20"], "ok.png"),
    "malformed boxes json": ({"ok.png": "ok", "dets.json": b"[{\"image_id\": 1"},
                             ["{d}/ok.png", "--boxes", "{d}/dets.json"], "dets.json"),
    "boxes not a list": ({"ok.png": "ok", "dets.json": b"{\"image_id\": 1}"},
                         ["{d}/ok.png", "--boxes", "{d}/dets.json"], "dets.json"),
    "empty directory": ({"sub/readme.txt": b"x"}, ["{d}/sub"], "sub"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_exit_2_no_output(case, tmp_path, capfd, tiny_weights):
    files, extra, named = BAD_INPUTS[case]
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, content in files.items():
        if content == "ok":
            cv2.imwrite(str(d / name), rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
        elif content == "truncated":
            data = cv2.imencode(".jpg", rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))[1].tobytes()
            (d / name).write_bytes(data[:len(data) // 2])
        else:
            (d / name).write_bytes(content)
    out = tmp_path / "out"
    code, stdout, stderr = run([a.format(d=d) for a in extra] + ["--weights", tiny_weights, "--out", out], capfd)
    assert code == 2
    lines = stderr.splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in stderr, stderr
    assert not out.exists()              # the folder comes with the first output, and there is none


@pytest.mark.parametrize("make", [_bad_weights, _wrong_config_weights, lambda p: p / "none.safetensors"])
def test_unusable_weights(make, tmp_path, capfd):
    weights = make(tmp_path)
    out = tmp_path / "out"
    code, stdout, stderr = run([EXAMPLE, "--weights", weights, "--out", out], capfd)
    assert code == 2
    lines = stderr.splitlines()
    assert len(lines) == 1 and str(weights) in lines[0], stderr
    assert not out.exists() or os.listdir(out) == []


def test_bad_arguments_exit_2(capfd, tiny_weights):
    with pytest.raises(SystemExit) as e:
        main(["infer", str(EXAMPLE), "--bbox", "1,2,3"])
    assert e.value.code == 2
    assert "X,Y,W,H" in capfd.readouterr().err
    code, _, err = run([EXAMPLE, "--weights", tiny_weights, "--bbox", "1,2,3,4", "--boxes", "d.json"], capfd)
    assert code == 2 and "not both" in err


@pytest.mark.parametrize("args", [["infer", "x.png", "--box-thr", "nan"], ["infer", "x.png", "--kpt-thr", "inf"],
                                  ["infer", "x.png", "--bbox", "0,0,nan,10"], ["infer", "x.mp4", "--end", "nan"],
                                  ["oracle", "--rtol=-inf"]])
def test_non_finite_numbers_are_refused_by_the_parser(args, capfd):
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capfd.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert args[-1].split("=")[-1] in err


def test_console_entry_point_has_no_traceback(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    p = subprocess.run([sys.executable, "-m", "refpose.cli", "infer", str(empty), "--config", "tiny",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.splitlines()[-1] == f"refpose infer: error: {empty}: empty file (0 bytes)"
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_readme_main_command(tmp_path):
    # the README's command as a newcomer types it (default config wgnet, output in the current directory)
    p = subprocess.run(["refpose", "infer", str(EXAMPLE)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    records = json.loads((tmp_path / "cameraman.pose.json").read_text())
    assert len(records) == 1 and len(records[0]["keypoints"]) == 51
    assert cv2.imread(str(tmp_path / "cameraman.pose.png")).shape[:2] == (512, 512)


def test_weights_that_overflow_are_an_error_with_no_output(photos, tmp_path, capfd):
    """Finite weights (3e38 fits float32) whose output overflows: one error naming the weights,
    no file written, never `Infinity` in a .json."""
    weights = refpose.init_weights("tiny", seed=0)
    weights["head.weight"][:] = 3e38
    path = tmp_path / "overflow.safetensors"
    refpose.save_weights(path, weights, "tiny", trained=True)
    out = tmp_path / "out"
    code, stdout, stderr = run([photos / "a.png", "--weights", path, "--out", out], capfd)
    assert code == 2, stderr
    assert stderr.splitlines() == [f"refpose infer: error: {path}: the network's output is not finite "
                                   "(NaN or infinity) in float32; the weights overflow it"]
    assert not out.exists()
