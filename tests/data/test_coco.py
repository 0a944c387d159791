"""COCO keypoint files and their scoring (refpose/data/coco.py): checking, and the ten figures against
pycocotools called directly on the same files.

Expected figures come from hand-worked cases (a perfect match; one pose at a known OKS) and from
pycocotools itself, with no refpose code in the way (tests/coco_files.py).
"""
import json
import math

import numpy as np
import pytest

from refpose.errors import DataError
from refpose.keypoints import COCO
from refpose.data.coco import STAT_NAMES, coco_eval, format_stats, load_annotations, load_results, score_results

pytest.importorskip("pycocotools", reason="COCO evaluation needs pycocotools")
from pycocotools.cocoeval import COCOeval  # noqa: E402
from coco_files import direct_pycocotools, make_gt, perfect_results, perturbed_results, write  # noqa: E402


# --- scoring --------------------------------------------------------------------------------

def test_perfect_predictions_score_one(tmp_path):
    gt = make_gt()
    stats = score_results(write(tmp_path / "gt.json", gt), write(tmp_path / "res.json", perfect_results(gt)))
    assert list(stats) == list(STAT_NAMES)
    # every person found at OKS 1 with nothing else: precision 1 at every recall, recall 1 everywhere
    # (pycocotools averages 1.0 over recall points: float64 summation, so to 1e-12)
    assert stats == {k: pytest.approx(1.0, abs=1e-12) for k in STAT_NAMES}


def test_hand_worked_single_pose_at_known_oks():
    """One person, one prediction at OKS 0.82: matched at thresholds .50 ... .80 (7 of 10)."""
    gt = make_gt()
    a = gt["annotations"][1]                              # the large person of image 101
    gt["annotations"] = [a]
    kp = np.array(a["keypoints"], float).reshape(17, 3)
    vis = kp[:, 2] > 0
    # COCO OKS = mean over labelled keypoints of exp(-d^2 / (2 s^2 k^2)), s^2 = area, k = 2 sigma:
    # shift every keypoint by the d that makes each term 0.82
    d = np.sqrt(-math.log(0.82) * 2 * a["area"] * (2 * COCO.oks_sigmas) ** 2)
    kp[:, 0] += d
    kp[:, 2] = 1.0
    stats = coco_eval(load_annotations(gt), load_results(
        [{"image_id": a["image_id"], "keypoints": kp.ravel().tolist(), "score": 0.9}], load_annotations(gt)))
    assert vis.sum() >= 4
    # precision is 1 at every recall for 7 of the 10 thresholds and undefined-as-0 for the others
    assert stats["AP"] == pytest.approx(0.7, abs=1e-12)   # a mean of ten 0/1 values: exact up to rounding
    assert stats["AP50"] == pytest.approx(1.0, abs=1e-12)  # a mean of 101 ones, summed in float64
    assert stats["AP75"] == pytest.approx(1.0, abs=1e-12)
    assert stats["AR"] == pytest.approx(0.7, abs=1e-12)
    assert stats["APl"] == pytest.approx(0.7, abs=1e-12)
    assert stats["APm"] is None and stats["ARm"] is None   # no medium person: pycocotools' -1


def test_perturbed_predictions_match_direct_pycocotools(tmp_path):
    gt = make_gt()
    gt_path, res_path = write(tmp_path / "gt.json", gt), write(tmp_path / "res.json", perturbed_results(gt))
    stats = score_results(gt_path, res_path)
    expected = direct_pycocotools(gt_path, res_path)
    # the same computation on the same files: equal to the last bit
    assert [stats[k] for k in STAT_NAMES] == expected
    assert 0.0 < stats["AP"] < 1.0                        # the perturbation really costs something


def test_records_by_file_name_score_like_by_image_id(tmp_path):
    gt = make_gt()
    res = perturbed_results(gt)
    names = {img["id"]: img["file_name"] for img in gt["images"]}
    by_name = [{"file_name": "some/dir/" + names[r.pop("image_id")], **r} for r in json.loads(json.dumps(res))]
    gt_path = write(tmp_path / "gt.json", gt)
    assert score_results(gt_path, by_name) == score_results(gt_path, write(tmp_path / "res.json", res))


def test_bbox_field_is_ignored_as_in_keypoint_results(tmp_path):
    """With a bbox, loadRes would use the box area for APm/APl; refpose scores keypoints."""
    gt = make_gt()
    res = perturbed_results(gt)
    with_box = [dict(r, bbox=[0.0, 0.0, 2000.0, 2000.0]) for r in res]   # a huge box: all 'large'
    gt_path = write(tmp_path / "gt.json", gt)
    assert score_results(gt_path, with_box) == score_results(gt_path, res)
    assert score_results(gt_path, res)["APm"] is not None


def test_scoring_twice_gives_the_same_figures():
    """COCOeval writes into the annotations; the loaded ground truth must not change."""
    gt = load_annotations(make_gt())
    res = load_results(perturbed_results(make_gt()), gt)
    assert coco_eval(gt, res) == coco_eval(gt, res)


def test_image_ids_restrict_the_evaluation(tmp_path):
    gt = make_gt()
    res = perfect_results(gt)
    res = [r for r in res if r["image_id"] != 103]        # image 103's people are not predicted
    assert score_results(gt, res)["AP"] < 1.0
    assert score_results(gt, res, image_ids=[101, 102, 104])["AP"] == pytest.approx(1.0, abs=1e-12)


def test_no_poses_at_all_score_zero():
    """No prediction: every person missed, precision and recall 0 (not pycocotools' crash on [])."""
    gt = load_annotations(make_gt())
    assert coco_eval(gt, []) == {k: 0.0 for k in STAT_NAMES}
    assert coco_eval(gt, [], image_ids=[104]) == {k: None for k in STAT_NAMES}   # nobody to find


def test_format_stats_lists_the_ten_figures():
    stats = dict(zip(STAT_NAMES, [0.5] * 9 + [None]))
    head, row = format_stats(stats).splitlines()
    assert head.split() == list(STAT_NAMES)
    assert row.split() == ["0.500"] * 9 + ["n/a"]


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, message", [
    (lambda r: r[2].update(image_id=999), "record 2: image_id 999 is not an image of"),
    (lambda r: r[1].update(keypoints=r[1]["keypoints"][:48]), "record 1: keypoints has 48 numbers, expected 51"),
    (lambda r: r[0].pop("score"), "record 0: needs a finite number 'score'"),
    (lambda r: r[0].pop("keypoints"), "record 0: no keypoints"),
    (lambda r: r[3].update(category_id=7), "record 3: category_id 7 is not a category"),
    (lambda r: r[0].update(file_name="nope.jpg") or r[0].pop("image_id"), "record 0: file_name 'nope.jpg'"),
    (lambda r: r[1]["keypoints"].__setitem__(4, -1e300), "record 1: keypoints[4] = -1e+300 is a coordinate beyond"),
])
def test_bad_records_are_rejected_naming_the_file_and_record(tmp_path, edit, message):
    gt = make_gt()
    res = perturbed_results(gt)
    edit(res)
    res_path = write(tmp_path / "res.json", res)
    with pytest.raises(DataError) as e:
        score_results(write(tmp_path / "gt.json", gt), res_path)
    assert str(e.value).startswith(str(res_path) + ": ")
    assert message in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("{not json", "malformed JSON in the results file"),
    ('{"image_id": 101}', "results must be a JSON list of records, got a dict"),
    ("[]", "the results list is empty"),
    ("[3]", "record 0: not a JSON object"),
])
def test_malformed_results_files(tmp_path, text, message):
    (tmp_path / "res.json").write_text(text)
    with pytest.raises(DataError, match=message):
        score_results(make_gt(), tmp_path / "res.json")


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="no such annotations file"):
        score_results(tmp_path / "gt.json", [])
    with pytest.raises(DataError, match="no such results file"):
        score_results(make_gt(), tmp_path / "res.json")


@pytest.mark.parametrize("edit, message", [
    (lambda g: g.pop("annotations"), "no 'annotations' list"),
    (lambda g: g["annotations"][2].pop("num_keypoints"), r"annotations\[2\]: missing num_keypoints"),
    (lambda g: g["annotations"][1].update(keypoints=[0] * 50), "keypoints has 50 numbers"),
    (lambda g: g["annotations"][4].update(image_id=77), "image_id 77 is not in the images list"),
    (lambda g: g["annotations"][0].update(iscrowd=2), "iscrowd must be 0 or 1"),
    (lambda g: g["images"].append(dict(g["images"][0])), "image id 101 appears twice"),
    # squared in OKS: 1e300 overflowed to inf with only a warning, and scored
    (lambda g: g["annotations"][3]["keypoints"].__setitem__(0, 1e300), r"keypoints\[0\] = 1e\+300 is a coordinate beyond 1,000,000"),
    (lambda g: g["annotations"][3].update(bbox=[0, 0, 2e6, 10]), "has a coordinate beyond 1,000,000 pixels"),
])
def test_bad_ground_truth_is_rejected(tmp_path, edit, message):
    gt = make_gt()
    edit(gt)
    with pytest.raises(DataError, match=message):
        load_annotations(write(tmp_path / "gt.json", gt))



def test_sigmas_are_pycocotools_defaults():
    np.testing.assert_array_equal(COCO.oks_sigmas, COCOeval(iouType="keypoints").params.kpt_oks_sigmas)
