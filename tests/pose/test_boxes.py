"""Person detections (refpose/detections.py): reading a COCO detection-results file and the
one rule that matches its records to an image."""
import json
import os

import numpy as np
import pytest

from refpose.pose.boxes import boxes_for_image, find_detections, image_keys, load_detections
from refpose.fileio import is_number
from refpose.errors import DataError


def test_load_detections(tmp_path):
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 20], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 20], "score": 0.1},   # below thr
            {"image_id": 1, "category_id": 2, "bbox": [5, 5, 10, 20], "score": 0.9},   # not a person
            {"image_id": 2, "category_id": 1, "bbox": [1, 1, 0, 20], "score": 0.9},    # no area
            {"image_id": 3, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5},
            {"image_id": 3, "category_id": 1, "bbox": [4, 3, 2, 1], "score": 0.4},
            {"file_name": "x.jpg", "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.7}]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    got = load_detections(path, box_thr=0.3)
    assert sorted(got, key=str) == [1, 3, "x.jpg"]
    np.testing.assert_array_equal(got[1][0], [[0, 0, 10, 20]])
    np.testing.assert_array_equal(got[1][1], [0.9])
    np.testing.assert_array_equal(got[3][0], [[1, 2, 3, 4], [4, 3, 2, 1]])
    np.testing.assert_array_equal(got[3][1], [0.5, 0.4])
    assert len(load_detections(path)[1][0]) == 2         # default threshold 0.0 keeps the 0.1


@pytest.mark.parametrize("text, problem", [
    ("[{\"image_id\": 1,", "malformed JSON in the detections file"), ("{\"a\": 1}", "JSON list"),
    ("[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [1, 2, 3], \"score\": 1}]", "bbox"),
    ("[{\"category_id\": 1, \"bbox\": [1, 2, 3, 4], \"score\": 1}]", "image_id"),
    ("[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [1, 2, 3, 4]}]", "score"),
    ("[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [1, 2, NaN, 4], \"score\": 1}]", "finite"),
    ("[3]", "expected an object")])
def test_load_detections_malformed(tmp_path, text, problem):
    path = tmp_path / "dets.json"
    path.write_text(text)
    with pytest.raises(DataError, match=problem) as e:
        load_detections(path)
    assert str(path) in str(e.value)


def test_load_detections_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such"):
        load_detections(tmp_path / "nope.json")


def test_is_number_refuses_nan_infinities_and_bools():
    assert is_number(3) and is_number(-0.5)
    assert not any(is_number(v) for v in (float("nan"), float("inf"), -float("inf"), True, "1", None))


def test_load_detections_refuses_a_nan_score(tmp_path):
    path = tmp_path / "dets.json"
    path.write_text('[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": NaN}]')
    with pytest.raises(DataError, match="finite"):
        load_detections(path)


def test_image_keys_are_id_then_file_name_then_base_name():
    assert image_keys("000000000785.jpg") == [785, "000000000785.jpg"]
    assert image_keys("val/000000000785.jpg") == [785, "val/000000000785.jpg", "000000000785.jpg"]
    assert image_keys("val/photo.jpg", image_id=7) == [7, "val/photo.jpg", "photo.jpg"]
    assert image_keys("photo.jpg") == ["photo.jpg"]


def test_find_detections_takes_the_first_key_the_file_holds():
    a, b, c = ([[1.0, 0, 1, 1]], [1.0]), ([[0, 1.0, 1, 1]], [0.5]), ([[9, 9, 1, 1]], [0.1])
    dets = {785: a, "000000000785.jpg": b, "photo.jpg": c}
    assert find_detections(dets, "000000000785.jpg") == (785, a)             # numeric stem = image id
    assert find_detections(dets, "val/000000000785.jpg", image_id=1) == ("000000000785.jpg", b)
    assert find_detections(dets, "other/photo.jpg") == ("photo.jpg", c)     # by base name
    assert find_detections(dets, "nobody.jpg") is None


def test_boxes_for_image_as_infer_takes_them():
    dets = {785: (np.array([[1.0, 2, 3, 4]]), np.array([0.9])), "photo.jpg": (np.array([[5.0, 6, 7, 8]]), np.array([0.4]))}
    boxes, scores, image_id = boxes_for_image("000000000785.jpg", detections=dets)
    assert boxes.tolist() == [[1, 2, 3, 4]] and scores.tolist() == [0.9] and image_id == 785
    boxes, scores, image_id = boxes_for_image("photo.jpg", detections=dets)
    assert boxes.tolist() == [[5, 6, 7, 8]] and image_id is None           # keyed by file name
    boxes, scores, image_id = boxes_for_image("12.jpg", detections=dets)
    assert boxes.shape == (0, 4) and scores is None and image_id == 12      # no box for this image
    boxes, scores, image_id = boxes_for_image("a.jpg", bbox=[[0, 0, 5, 5]])
    assert boxes.tolist() == [[0, 0, 5, 5]] and scores is None and image_id is None
    assert boxes_for_image("a.jpg")[0] is None                               # the whole image


@pytest.mark.parametrize("name", ["²³.jpg", "٣.jpg", "①.png", "１２.jpg"])
def test_a_stem_of_non_ascii_digits_is_no_image_id(name):
    """'²³'.isdigit() is true but int('²³') is a ValueError (was a traceback that stopped the batch)."""
    assert image_keys(name) == [name]
    assert boxes_for_image(name)[2] is None


def test_cli_a_folder_with_a_superscript_digit_name_runs_every_image(tmp_path, capfd):
    import cv2

    from refpose.cli import main

    for name in ("²³.jpg", "7.jpg"):
        cv2.imwrite(str(tmp_path / name), np.full((40, 30, 3), 120, np.uint8))
    assert main(["infer", str(tmp_path), "--config", "tiny", "--out", str(tmp_path / "out")]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["7.pose.json", "7.pose.png", "²³.pose.json", "²³.pose.png"]
    assert "Traceback" not in capfd.readouterr().err
