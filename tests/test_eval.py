"""COCO keypoint evaluation: checking, scoring against pycocotools called directly, OKS-NMS.

The ground truth is built here with every field a COCO keypoint file has. Expected
figures come from hand-worked cases (a perfect match; one pose at a known OKS) and from
pycocotools itself, called directly on the same files without refpose in the way.
"""
import contextlib
import io
import json
import math
import os
import shutil

import numpy as np
import pytest

import refpose
from refpose.errors import DataError, WeightsError
from refpose.evaluate import PROGRESS_SUFFIX, ModelSpec, RunOptions, _read_progress, gt_person_boxes
from refpose.evaluate import evaluate_images as _evaluate_images
from refpose.nms import oks_iou, oks_nms
from refpose.scoring import (COCO_SIGMAS, STAT_NAMES, coco_eval, format_stats, load_annotations, load_results,
                             score_results)
from refpose.topdown import default_model



def evaluate_images(ann, images, results_out, *, boxes=None, weights=None, progress=False, **options):
    """`refpose.evaluate.evaluate_images` with the model and run options as keywords."""
    model = ModelSpec(None if weights is None else str(weights))
    return _evaluate_images(ann, images, results_out, boxes=boxes, model=model, options=RunOptions(**options),
                            progress=progress)


pycocotools = pytest.importorskip("pycocotools", reason="COCO evaluation needs pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

KEYPOINT_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                  "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
                  "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]
SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
            [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
# a standing person in a unit box (x right, y down): 17 (x, y) in COCO keypoint order
UNIT_POSE = np.array([[.50, .08], [.53, .06], [.47, .06], [.57, .08], [.43, .08], [.65, .22], [.35, .22],
                      [.72, .38], [.28, .38], [.75, .52], [.25, .52], [.60, .55], [.40, .55], [.61, .75],
                      [.39, .75], [.62, .95], [.38, .95]])


def make_gt(seed=0):
    """A COCO person-keypoints ground truth: 4 images (one without people), 7 persons of
    medium and large size with some keypoints unlabelled (v = 0) or occluded (v = 1), one
    crowd region, as in person_keypoints_val2017.json."""
    rng = np.random.default_rng(seed)
    images = [{"id": 101 + i, "file_name": f"{101 + i:012d}.jpg", "width": 640, "height": 480,
               "license": 1, "coco_url": "", "flickr_url": "", "date_captured": "2013-11-14 00:00:00"}
              for i in range(4)]
    # (image id, x, y, w, h): boxes of 40..300 px, so that both the medium (32^2..96^2) and
    # the large (> 96^2) ranges hold people
    people = [(101, 20, 30, 60, 150), (101, 200, 40, 110, 260), (101, 400, 100, 45, 70),
              (102, 50, 60, 160, 380), (102, 300, 200, 50, 90), (103, 100, 100, 90, 200),
              (103, 350, 50, 70, 120)]
    annotations = []
    for k, (image_id, x, y, w, h) in enumerate(people):
        xy = UNIT_POSE * [w, h] + [x, y] + rng.normal(0, 2, (17, 2))
        v = rng.choice([0, 1, 2], size=17, p=[0.15, 0.15, 0.7])
        v[[5, 6, 11, 12]] = 2                         # torso always labelled
        kp = np.concatenate([np.round(xy, 1), v[:, None]], axis=1)
        kp[v == 0, :2] = 0                            # COCO writes unlabelled keypoints as 0, 0, 0
        annotations.append({
            "id": 5000 + k, "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "keypoints": [float(a) if j % 3 < 2 else int(a) for j, a in enumerate(kp.ravel())],
            "num_keypoints": int((v > 0).sum()), "bbox": [float(x), float(y), float(w), float(h)],
            "area": float(0.8 * w * h),               # a segment area, smaller than its box
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    annotations.append({"id": 9000, "image_id": 102, "category_id": 1, "iscrowd": 1,
                        "keypoints": [0] * 51, "num_keypoints": 0, "bbox": [400.0, 20.0, 200.0, 150.0],
                        "area": 20000.0, "segmentation": {"counts": [0, 10], "size": [480, 640]}})
    return {"info": {"description": "refpose test"}, "licenses": [{"id": 1, "name": "test", "url": ""}],
            "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "person", "supercategory": "person",
                            "keypoints": KEYPOINT_NAMES, "skeleton": SKELETON}]}


def perfect_results(gt):
    """Every labelled person, keypoints exactly the ground truth's, keypoint and pose score 1."""
    out = []
    for a in gt["annotations"]:
        if a["num_keypoints"] == 0:
            continue
        kp = np.array(a["keypoints"], float).reshape(17, 3)
        kp[:, 2] = 1.0
        out.append({"image_id": a["image_id"], "category_id": 1, "keypoints": kp.ravel().tolist(), "score": 1.0})
    return out


def perturbed_results(gt, seed=1):
    """Noisy poses with random scores, one person missed, two false positives."""
    rng = np.random.default_rng(seed)
    out = []
    for n, a in enumerate(gt["annotations"]):
        if a["num_keypoints"] == 0 or n == 3:
            continue
        kp = np.array(a["keypoints"], float).reshape(17, 3)
        scale = math.sqrt(a["area"])
        kp[:, :2] += rng.normal(0, 0.04 * scale, (17, 2))
        kp[:, 2] = rng.uniform(0.1, 1.0, 17)
        out.append({"image_id": a["image_id"], "category_id": 1, "keypoints": kp.ravel().tolist(),
                    "score": float(rng.uniform(0.3, 1.0))})
    for image_id in (101, 104):
        kp = np.concatenate([rng.uniform(0, 400, (17, 2)), rng.uniform(0, 1, (17, 1))], axis=1)
        out.append({"image_id": image_id, "category_id": 1, "keypoints": kp.ravel().tolist(),
                    "score": float(rng.uniform(0.3, 1.0))})
    return out


def write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def direct_pycocotools(gt_path, res_path):
    """The ten stats from pycocotools alone, as its README shows."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(str(res_path))
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats)


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
    d = np.sqrt(-math.log(0.82) * 2 * a["area"] * (2 * COCO_SIGMAS) ** 2)
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
])
def test_bad_ground_truth_is_rejected(tmp_path, edit, message):
    gt = make_gt()
    edit(gt)
    with pytest.raises(DataError, match=message):
        load_annotations(write(tmp_path / "gt.json", gt))


# --- OKS-NMS --------------------------------------------------------------------------------

def test_oks_iou_matches_pycocotools_oks():
    """With every keypoint labelled and equal areas, MMPose's OKS is COCO's OKS."""
    rng = np.random.default_rng(3)
    g = np.concatenate([rng.uniform(0, 100, (17, 2)), np.full((17, 1), 2.0)], axis=1)
    d = g[None] + np.concatenate([rng.normal(0, 3, (5, 17, 2)), np.zeros((5, 17, 1))], axis=2)
    area = 5000.0
    ours = oks_iou(g, d, area, np.full(5, area))
    ev = COCOeval(iouType="keypoints")
    ev._gts = {(1, 1): [{"keypoints": g.ravel().tolist(), "area": area, "bbox": [0, 0, 100, 100]}]}
    ev._dts = {(1, 1): [{"keypoints": p.ravel().tolist(), "score": 1.0 - i / 10} for i, p in enumerate(d)]}
    ev.params.maxDets = [20]
    theirs = ev.computeOks(1, 1)[:, 0]
    # ours is rounded to float32 as in MMPose: agreement to float32 precision
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_oks_nms_keeps_the_best_of_duplicates_and_distinct_poses():
    base = np.concatenate([UNIT_POSE * [80, 200] + [10, 10], np.ones((17, 1))], axis=1)
    poses = np.stack([base, base + [0.5, 0.5, 0], base + [300, 0, 0], base + [1, 0, 0]])
    scores = np.array([0.6, 0.9, 0.5, 0.7])
    areas = np.full(4, 80 * 200.0)
    # poses 0, 1, 3 are the same person (OKS ~ 1 > 0.9); pose 2 is another, far away
    assert oks_nms(poses, scores, areas) == [1, 2]


def test_oks_nms_suppresses_above_the_threshold_only():
    """A pose at OKS 0.85 to a better one survives, one at 0.95 is suppressed (threshold 0.9)."""
    base = np.concatenate([UNIT_POSE * [80, 200], np.ones((17, 1))], axis=1)
    area = 16000.0
    var = (2 * COCO_SIGMAS) ** 2
    # a shift d_k per keypoint with exp(-d^2 / (var * area * 2)) = t gives OKS t
    def shifted(t):
        p = base.copy()
        p[:, 0] += np.sqrt(-np.log(t) * var * area * 2)
        return p
    poses = np.stack([base, shifted(0.85), shifted(0.95)])
    assert oks_nms(poses, np.array([1.0, 0.5, 0.4]), np.full(3, area)) == [0, 1]


def test_sigmas_are_pycocotools_defaults():
    np.testing.assert_array_equal(COCO_SIGMAS, COCOeval(iouType="keypoints").params.kpt_oks_sigmas)


# --- run and score ---------------------------------------------------------------------------

def test_gt_person_boxes_clip_and_skip_like_mmpose():
    gt = make_gt()
    gt["annotations"][0]["bbox"] = [-10.0, 400.0, 60.0, 150.0]       # out on the left and the bottom
    gt["annotations"][5]["bbox"] = [700.0, 10.0, 50.0, 50.0]         # right of the 640 px image
    boxes = gt_person_boxes(load_annotations(gt))
    # clipped to x in [0, 639], y in [0, 479]: [0, 400] .. [50, 479]
    np.testing.assert_array_equal(boxes[101][0], [0.0, 400.0, 50.0, 79.0])
    assert len(boxes[101]) == 3
    assert len(boxes[102]) == 2                        # the crowd region (no keypoints) is not a person
    assert len(boxes[103]) == 1                        # nothing left of the box outside the image
    assert len(boxes[104]) == 0


def run_gt():
    """Two images with two people each and one without anybody (image ids 102, 103, 104)."""
    gt = make_gt()
    gt["images"] = [img for img in gt["images"] if img["id"] != 101]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] != 101]
    return gt


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """GT, its images (random pixels) and seeded tiny-config weights, in a folder."""
    import cv2

    root = tmp_path_factory.mktemp("run")
    gt = run_gt()
    write(root / "gt.json", gt)
    (root / "images").mkdir()
    rng = np.random.default_rng(7)
    for img in gt["images"]:
        pixels = rng.integers(0, 256, (img["height"], img["width"], 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / img["file_name"]), pixels)
    refpose.save_weights(root / "tiny.safetensors", refpose.init_weights("tiny", seed=0), "tiny", trained=False)
    return root


@pytest.fixture(scope="module")
def fresh_run(run_files, tmp_path_factory):
    """One complete run in this process (workers 1), flip test on, ground-truth boxes."""
    out = tmp_path_factory.mktemp("fresh") / "res.json"
    run = evaluate_images(run_files / "gt.json", run_files / "images", weights=run_files / "tiny.safetensors",
                          results_out=out, progress=False)
    return run, json.loads(out.read_text())


@pytest.mark.slow
def test_run_gives_one_pose_per_gt_box_as_estimate_does(run_files, fresh_run):
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="the comparison needs BLAS on one thread")
    run, records = fresh_run
    assert run.images == 3 and run.scored == [102, 103, 104] and run.resumed == 0 and run.missing == []
    assert run.boxes == "ground-truth person boxes"
    assert set(STAT_NAMES) == set(run.stats)
    assert not (run_files / "res.json").exists()
    assert not os.path.exists(str(run.results_path) + PROGRESS_SUFFIX)   # complete: progress removed
    # the plumbing: the same poses as the pipeline itself on the ground-truth boxes with flip test
    model = default_model(run_files / "tiny.safetensors")
    expected = []
    for image_id, name in ((102, "000000000102.jpg"), (103, "000000000103.jpg")):
        boxes = [a["bbox"] for a in run_gt()["annotations"] if a["image_id"] == image_id and a["num_keypoints"]]
        with threadpoolctl.threadpool_limits(1, user_api="blas"):     # as evaluate_images runs it
            poses = refpose.estimate(refpose.read_image(run_files / "images" / name), model, boxes, flip=True)
        expected += [(image_id, p["keypoints"].ravel().tolist(), p["score"]) for p in poses]
    got = [(r["image_id"], r["keypoints"], r["score"]) for r in records]
    # OKS-NMS keeps all four (the people are far apart) and orders them by score per image
    assert sorted(got, key=lambda g: (g[0], -g[2])) == sorted(expected, key=lambda g: (g[0], -g[2]))
    assert all(set(r) == {"image_id", "category_id", "keypoints", "score"} for r in records)
    # the figures are pycocotools' on the file written
    assert [run.stats[k] for k in STAT_NAMES] == [
        -1.0 if v is None else v for v in direct_pycocotools(run_files / "gt.json", run.results_path)]


@pytest.mark.slow
def test_resume_skips_finished_images(run_files, fresh_run, tmp_path):
    out = tmp_path / "res.json"
    first = evaluate_images(run_files / "gt.json", run_files / "images", weights=run_files / "tiny.safetensors",
                            results_out=out, limit=1, progress=False)
    assert first.scored == [102]
    progress = tmp_path / ("res.json" + PROGRESS_SUFFIX)
    lines = progress.read_text().splitlines()
    assert len(lines) == 2                             # the settings, then image 102
    # mark image 102's poses: if the next run redid the image, the mark would be gone
    entry = json.loads(lines[1])
    for r in entry["records"]:
        r["score"] = 0.123456
    progress.write_text(lines[0] + "\n" + json.dumps(entry) + "\n" + '{"image_id": 103, "reco')  # cut short
    second = evaluate_images(run_files / "gt.json", run_files / "images", weights=run_files / "tiny.safetensors",
                             results_out=out, progress=False)
    assert second.resumed == 1 and second.scored == [102, 103, 104]
    records = json.loads(out.read_text())
    assert [r["score"] for r in records if r["image_id"] == 102] == [0.123456, 0.123456]
    # the image redone after the cut-short line, and the rest, are as in a fresh run
    assert [r for r in records if r["image_id"] != 102] == [r for r in fresh_run[1] if r["image_id"] != 102]
    assert not progress.exists()


@pytest.mark.slow
def test_workers_give_the_same_records(run_files, fresh_run, tmp_path):
    out = tmp_path / "res.json"
    run = evaluate_images(run_files / "gt.json", run_files / "images", weights=run_files / "tiny.safetensors",
                          results_out=out, workers=2, progress=False)
    assert json.loads(out.read_text()) == fresh_run[1]   # same code, same inputs: bit for bit
    assert run.stats == fresh_run[0].stats


@pytest.mark.slow
def test_missing_image_is_reported_and_left_out(run_files, fresh_run, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(run_files / "images", images)
    (images / "000000000103.jpg").write_bytes(b"not an image")   # people in it: it is decoded
    (images / "000000000104.jpg").unlink()                        # nobody in it: only looked for
    out = tmp_path / "res.json"
    run = evaluate_images(run_files / "gt.json", images, weights=run_files / "tiny.safetensors",
                          results_out=out, progress=False)
    assert run.scored == [102]
    assert [p for p, _ in run.missing] == [str(images / "000000000103.jpg"), str(images / "000000000104.jpg")]
    assert "not" in run.missing[0][1] and run.missing[1][1] == "no such file"
    assert json.loads(out.read_text()) == [r for r in fresh_run[1] if r["image_id"] == 102]
    assert (tmp_path / ("res.json" + PROGRESS_SUFFIX)).exists()    # kept: the run is not complete


def test_resume_refuses_other_settings(run_files, tmp_path):
    out = tmp_path / "res.json"
    progress = tmp_path / ("res.json" + PROGRESS_SUFFIX)
    progress.write_text(json.dumps({"format": "refpose-eval-progress/1", "settings": {"flip": False}}) + "\n")
    with pytest.raises(DataError, match="other settings .*pass --restart"):
        evaluate_images(run_files / "gt.json", run_files / "images", weights=run_files / "tiny.safetensors",
                        results_out=out, progress=False)


def test_damaged_progress_line_in_the_middle_is_an_error(tmp_path):
    gt = load_annotations(run_gt())
    settings = {"flip": True}
    path = tmp_path / "p.jsonl"
    head = json.dumps({"format": "refpose-eval-progress/1", "settings": settings})
    path.write_text(head + "\n{broken\n" + json.dumps({"image_id": 102, "records": []}) + "\n")
    with pytest.raises(DataError, match="line 2 is damaged"):
        _read_progress(str(path), settings, gt)
    path.write_text(head + "\n" + json.dumps({"image_id": 102, "records": []}) + "\n{broken")
    assert _read_progress(str(path), settings, gt) == {102: []}    # a cut-short last line: redone


def test_run_bad_input(run_files, tmp_path):
    args = dict(weights=run_files / "tiny.safetensors", results_out=tmp_path / "res.json", progress=False)
    with pytest.raises(DataError, match="image directory: no such folder"):
        evaluate_images(run_files / "gt.json", tmp_path / "nope", **args)
    with pytest.raises(WeightsError, match="no such weights file"):
        evaluate_images(run_files / "gt.json", run_files / "images", **dict(args, weights=tmp_path / "w.st"))
    with pytest.raises(DataError, match="none of the 3 images"):
        evaluate_images(run_files / "gt.json", tmp_path, **args)
    dets = write(tmp_path / "dets.json", [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 9, 9], "score": 1}])
    with pytest.raises(DataError, match="no detection belongs to an image of"):
        evaluate_images(run_files / "gt.json", run_files / "images", boxes=dets, **args)


@pytest.mark.slow
def test_run_on_detections(run_files, tmp_path):
    boxes = [[40.0, 50.0, 170.0, 390.0], [290.0, 190.0, 60.0, 100.0]]
    dets = [{"image_id": 102, "category_id": 1, "bbox": b, "score": s} for b, s in zip(boxes, (0.9, 0.6))]
    dets += [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 9, 9], "score": 1.0},   # not in GT: ignored
             {"image_id": 103, "category_id": 3, "bbox": [0, 0, 90, 90], "score": 1.0},  # not a person
             # the first box again, scored lower: the same crop, the same pose (OKS 1), suppressed by NMS
             {"image_id": 102, "category_id": 1, "bbox": boxes[0], "score": 0.3}]
    out = tmp_path / "res.json"
    run = evaluate_images(run_files / "gt.json", run_files / "images", boxes=write(tmp_path / "d.json", dets),
                          weights=run_files / "tiny.safetensors", results_out=out, flip=False, progress=False)
    assert run.boxes.startswith("detections from ")
    records = json.loads(out.read_text())
    poses = refpose.estimate(refpose.read_image(run_files / "images" / "000000000102.jpg"),
                             default_model(run_files / "tiny.safetensors"), boxes, box_scores=[0.9, 0.6])
    # the box scores enter the rescoring; BLAS threads may differ here: float32 rounding of heatmaps
    np.testing.assert_allclose(sorted(r["score"] for r in records), sorted(p["score"] for p in poses), rtol=1e-5)
    assert {r["image_id"] for r in records} == {102}
    assert len(records) == 2


def test_run_sends_the_crops_of_several_images_through_one_forward(run_files, monkeypatch):
    # images 102 and 103 have two people each: their 4 crops (8 with the mirrored ones) go through
    # the network together, where a run image by image made one call per image
    from refpose import evaluate, topdown

    batches = []
    predict = topdown.predict_heatmaps

    def counted(model, x, flip=False):
        batches.append(len(x))
        return predict(model, x, flip)
    monkeypatch.setattr(topdown, "predict_heatmaps", counted)
    jobs, _ = evaluate.make_jobs(evaluate.load_annotations(run_files / "gt.json"), str(run_files / "images"), None, None)
    results = evaluate.Predictor(evaluate.ModelSpec(weights=str(run_files / "tiny.safetensors")))(jobs)
    assert batches == [4]
    assert [(image_id, len(records)) for image_id, records, _ in results] == [(102, 2), (103, 2), (104, 0)]
