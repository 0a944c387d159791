"""COCO person-keypoints files built for the tests, and pycocotools called directly on them.

The ground truth has every field a COCO keypoint file has; expected figures come from
hand-worked cases and from pycocotools itself, with no refpose code in the way.
"""
import contextlib
import io
import json
import math

import numpy as np

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
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(str(res_path))
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats)


def run_gt():
    """Two images with two people each and one without anybody (image ids 102, 103, 104)."""
    gt = make_gt()
    gt["images"] = [img for img in gt["images"] if img["id"] != 101]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] != 101]
    return gt
