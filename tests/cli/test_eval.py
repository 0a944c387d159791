"""`refpose eval` from the command line: output, JSON keys, bad input as one line and status 2."""
import json

import pytest

from refpose.cli import main

pytest.importorskip("pycocotools", reason="COCO evaluation needs pycocotools")
from coco_files import direct_pycocotools, make_gt, perturbed_results, write  # noqa: E402

KEYS = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]


@pytest.fixture
def files(tmp_path):
    gt = make_gt()
    return write(tmp_path / "gt.json", gt), write(tmp_path / "res.json", perturbed_results(gt))


def test_json_is_one_object_with_the_ten_keys(files, capsys):
    gt_path, res_path = files
    assert main(["eval", "--ann", str(gt_path), "--results", str(res_path), "--json"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out)                                  # nothing but the object: pycocotools is muted
    assert list(stats) == KEYS
    assert [stats[k] for k in KEYS] == direct_pycocotools(gt_path, res_path)   # same computation: exact


def test_text_output_lists_table_2_columns_first(files, capsys):
    gt_path, res_path = files
    assert main(["eval", "--ann", str(gt_path), "--results", str(res_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == KEYS
    expected = direct_pycocotools(gt_path, res_path)
    assert lines[2].split() == [f"{v:.3f}" for v in expected]


@pytest.mark.parametrize("content, message", [
    ("{broken", "malformed JSON in the results file"),
    ('[{"image_id": 424242, "keypoints": [0, 0, 1], "score": 1}]', "record 0: image_id 424242 is not an image"),
    (json.dumps([{"image_id": 101, "keypoints": [1.0] * 50, "score": 1}]), "keypoints has 50 numbers, expected 51"),
])
def test_bad_results_one_line_status_2(files, capsys, content, message):
    gt_path, res_path = files
    res_path.write_text(content)
    assert main(["eval", "--ann", str(gt_path), "--results", str(res_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"refpose eval: error: {res_path}: ")
    assert message in err[0]


def test_bad_annotations_one_line_status_2(files, tmp_path, capsys):
    _, res_path = files
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe not text")
    assert main(["eval", "--ann", str(bad), "--results", str(res_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"{bad}: not a JSON annotations file" in err[0]
    assert main(["eval", "--ann", str(tmp_path / "none.json"), "--results", str(res_path)]) == 2
    assert "no such annotations file" in capsys.readouterr().err


def test_run_options_are_refused_with_results(files, capsys):
    gt_path, res_path = files
    with pytest.raises(SystemExit) as e:
        main(["eval", "--ann", str(gt_path), "--results", str(res_path), "--limit", "3"])
    assert e.value.code == 2
    assert "--limit only go with --images" in capsys.readouterr().err


def test_results_and_images_are_exclusive(files, tmp_path, capsys):
    gt_path, res_path = files
    with pytest.raises(SystemExit) as e:
        main(["eval", "--ann", str(gt_path), "--results", str(res_path), "--images", str(tmp_path)])
    assert e.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


# --- run mode -----------------------------------------------------------------------------------



@pytest.mark.slow
def test_run_json_and_box_source(run_files, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "res.json"
    argv = ["eval", "--ann", str(run_files / "gt.json"), "--images", str(run_files / "images"),
            "--weights", str(run_files / "tiny.safetensors"), "--results-out", str(out), "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    stats = json.loads(captured.out)
    assert list(stats) == KEYS
    assert "boxes: ground-truth person boxes; flip test on" in captured.err
    assert "3 of 3 scored" in captured.err and f"wrote {out} (4 poses)" in captured.err
    assert [-1.0 if stats[k] is None else stats[k] for k in KEYS] == direct_pycocotools(run_files / "gt.json", out)


@pytest.mark.slow
def test_run_missing_image_scores_the_rest_and_exits_2(run_files, tmp_path, capsys):  # noqa: F811
    import shutil

    images = tmp_path / "images"
    shutil.copytree(run_files / "images", images)
    (images / "000000000103.jpg").unlink()
    out = tmp_path / "res.json"
    argv = ["eval", "--ann", str(run_files / "gt.json"), "--images", str(images),
            "--weights", str(run_files / "tiny.safetensors"), "--results-out", str(out), "--no-flip"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-2].split() == KEYS       # the figures of what was there
    assert "2 of 3 scored, 1 missing or unreadable" in captured.out
    err = captured.err.splitlines()
    assert err[0] == f"refpose eval: {images / '000000000103.jpg'}: no such file"
    assert err[1].startswith("refpose eval: error: 1 of 3 images missing or unreadable")
    assert len(err) == 2
    # put the image back: the next run does only that one
    shutil.copy(run_files / "images" / "000000000103.jpg", images)
    assert main(argv) == 0
    assert "3 of 3 scored (2 from the progress of an earlier run)" in capsys.readouterr().out


def test_run_bad_annotations_one_line_no_output(run_files, tmp_path, capsys):  # noqa: F811
    (tmp_path / "gt.json").write_text('{"images": [], "annotations": 3, "categories": []}')
    out = tmp_path / "res.json"
    argv = ["eval", "--ann", str(tmp_path / "gt.json"), "--images", str(run_files / "images"),
            "--results-out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"refpose eval: error: {tmp_path / 'gt.json'}: not a COCO annotations file: no 'annotations' list"]
    assert list(tmp_path.iterdir()) == [tmp_path / "gt.json"]     # nothing written
