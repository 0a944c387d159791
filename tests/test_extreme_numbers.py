"""Numbers at the edges of JSON and of OpenCV: integers of hundreds of digits, ids that are lists,
boxes of billions of pixels. Each reader refuses them at its boundary (a DataError naming the
record and field); the drawing keeps what it shows."""
from __future__ import annotations

import json

import numpy as np
import pytest

from refpose.fileio import is_int, is_number
from refpose.pose.boxes import load_detections
from refpose.pose.draw import draw_poses
from refpose.errors import DataError
from refpose.data.mpii import load_entries as load_mpii_annotations, load_predictions
from refpose.data.coco import load_annotations, load_results

HUGE = 10 ** 400          # a valid JSON number that no float holds


def test_number_checks_refuse_what_a_float_cannot_hold():
    assert is_number(10 ** 300) and is_int(10 ** 300) and is_number(1e308)
    for v in (HUGE, -HUGE, True, False, float("nan"), float("inf"), [1], "1", None):
        assert not is_number(v), v
        assert not is_int(v), v
    assert not is_int(1.0)


def _write(path, value):
    path.write_text(json.dumps(value))
    return path


@pytest.mark.parametrize("field, value, message", [
    ("score", HUGE, "score must be a finite number"),
    ("bbox", [0, 0, HUGE, 4], "bbox must be a list of 4 finite numbers"),
    ("category_id", [1], "category_id must be an integer"),
    ("category_id", HUGE, "category_id must be an integer"),
    ("image_id", [1], "needs an image_id"),
])
def test_detections_with_extreme_values(tmp_path, field, value, message):
    record = {"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.9, field: value}
    path = _write(tmp_path / "dets.json", [record])
    with pytest.raises(DataError, match=message) as e:
        load_detections(path)
    assert f"{path}: detection 0: " in str(e.value)
    assert len(str(e.value)) < 300                 # the 400 digits are not echoed


def _gt():
    kpts = [10, 10, 2] * 17
    return {"images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "person"}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "keypoints": kpts, "num_keypoints": 17,
                             "area": 400.0, "bbox": [0, 0, 20, 20], "iscrowd": 0}]}


@pytest.mark.parametrize("field, value, message", [
    ("image_id", [1], r"annotation id 5 \(annotations\[0\]\): image_id \[1\] is not in the images list"),
    ("category_id", [1], r"annotation id 5 \(annotations\[0\]\): category_id \[1\] is not in the categories"),
    ("area", HUGE, r"annotation id 5 \(annotations\[0\]\): area must be a non-negative finite number"),
    ("keypoints", [1] * 50 + [HUGE], r"keypoints\[50\] is not a finite number, got 1000"),
    ("id", [5], r"annotations\[0\]: 'id' must be an integer"),
])
def test_annotations_with_extreme_values(tmp_path, field, value, message):
    gt = _gt()
    gt["annotations"][0][field] = value
    with pytest.raises(DataError, match=message):
        load_annotations(_write(tmp_path / "gt.json", gt))


@pytest.mark.parametrize("field, value, message", [
    ("image_id", [1], r"record 0: image_id \[1\] is not an image"),
    ("category_id", [1], r"record 0: category_id \[1\] is not a category"),
    ("score", HUGE, "record 0: needs a finite number 'score'"),
    ("keypoints", [HUGE] + [1] * 50, r"record 0: keypoints\[0\] is not a finite number"),
])
def test_results_with_extreme_values(tmp_path, field, value, message):
    record = {"image_id": 1, "category_id": 1, "keypoints": [10, 10, 1] * 17, "score": 0.5, field: value}
    with pytest.raises(DataError, match=message):
        load_results(_write(tmp_path / "res.json", [record]), load_annotations(_gt()))


def test_a_json_integer_of_thousands_of_digits_is_a_data_error(tmp_path):
    path = tmp_path / "res.json"
    path.write_text('[{"image_id": 1, "score": ' + "9" * 5000 + "}]")
    with pytest.raises(DataError, match="cannot read the results file"):
        load_results(path, load_annotations(_gt()))


def test_mpii_readers_with_extreme_values(tmp_path):
    entry = {"image": "a.jpg", "center": [10, 10], "scale": HUGE}
    with pytest.raises(DataError, match="entry 0: scale must be a positive number"):
        load_mpii_annotations(_write(tmp_path / "ann.json", [entry]))
    with pytest.raises(DataError, match="record 0: keypoints must be 16"):
        load_predictions([{"keypoints": [HUGE] * 48}])


def test_a_box_of_billions_of_pixels_draws_what_shows():
    """OpenCV's drawing takes 32-bit ints; a box of 3e9 pixels must draw like any box beyond the
    image: its top and left edges only (the others are outside)."""
    image = np.zeros((60, 80, 3), np.uint8)
    kpts = np.zeros((17, 3))                      # every joint hidden (score 0): only the box shows
    huge = draw_poses(image, [{"keypoints": kpts, "bbox": [5, 5, 3e9, 3e9]}])
    beyond = draw_poses(image, [{"keypoints": kpts, "bbox": [5, 5, 1000, 1000]}])
    np.testing.assert_array_equal(huge, beyond)
    assert huge[5, 40].any() and huge[30, 5].any() and not huge[30, 40].any()


def test_a_link_to_a_joint_far_away_keeps_its_direction():
    """A link from (10, 10) to a joint 3e9 pixels away on the diagonal is the diagonal, as a link
    to (1000, 1000) is: the segment is clipped along itself, not by clamping its far end."""
    image = np.zeros((60, 80, 3), np.uint8)
    kpts = np.zeros((17, 3))
    kpts[5] = (10, 10, 1.0)                       # left shoulder
    kpts[7] = (3e9, 3e9, 1.0)                     # left elbow, linked to the shoulder in COCO
    far = draw_poses(image, [{"keypoints": kpts, "bbox": [0, 0, 1, 1]}], boxes=False)
    kpts[7, :2] = (1000, 1000)
    near = draw_poses(image, [{"keypoints": kpts, "bbox": [0, 0, 1, 1]}], boxes=False)
    np.testing.assert_array_equal(far, near)
    assert far[40, 40].any() and not far[40, 10].any()
