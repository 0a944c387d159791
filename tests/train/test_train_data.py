"""Training data: targets, augmentation, dataset reading (NumPy/OpenCV only, no torch).

Expected positions are worked out by hand from the crop's definition (the box's centre goes
to the centre of the input, its padded width to the input's width), not from the code.
"""
import dataclasses
import json

import cv2
import numpy as np
import pytest

from refpose.errors import DataError
from refpose.keypoints import COCO
from refpose.pose.crop import warp
from refpose.train.data import Augment, Person, TrainDataError, load_train_set, make_sample, sample_transform
from refpose.train.targets import heatmap_targets

IN = (128, 96)          # tiny's input (H, W)
HM = (32, 24)           # its heatmaps
STRIDE = 4
IMAGE = (240, 320)      # (H, W) of the test image


def _person(joints: dict, box=(100.0, 50.0, 75.0, 100.0)) -> Person:
    """A person whose box has the input's aspect ratio (75:100 = 96:128), joints {k: (x, y, v)}."""
    kp = np.zeros((17, 3))
    for k, v in joints.items():
        kp[k] = v
    return Person("unused.png", np.array(box), kp)


def _peak(heatmap: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(heatmap.argmax(), heatmap.shape)
    return int(x), int(y)


# the box (100, 50, 75, 100) has centre (137.5, 100); padded by 1.25 its width is 93.75 pixels,
# which the crop maps onto 96: one image pixel is 96 / 93.75 input pixels
CX, CY, S = 137.5, 100.0, 96 / 93.75


def test_gaussian_peak_lands_on_the_keypoint_after_the_affine():
    person = _person({5: (CX + 20, CY - 30, 2)})
    rng = np.random.default_rng(0)
    image = np.zeros(IMAGE + (3,), np.uint8)
    _, heatmaps, weights = make_sample(image, person, IN, HM, rng, Augment.off())
    x_in, y_in = 48 + S * 20, 64 - S * 30          # input pixels
    assert _peak(heatmaps[5]) == (round(x_in / STRIDE), round(y_in / STRIDE))
    assert heatmaps[5].max() == pytest.approx(1.0)  # an unnormalised Gaussian, peak 1
    assert weights[5] == 1 and weights.sum() == 1


def test_after_a_flip_the_peak_moves_to_the_mirror_joint():
    # left shoulder (5) right of the centre; mirrored it is the right shoulder (6), as far to the left
    person = _person({5: (CX + 20, CY - 30, 2)})
    aug = dataclasses.replace(Augment.off(), flip_prob=1.0)
    image = np.zeros(IMAGE + (3,), np.uint8)
    _, heatmaps, weights = make_sample(image, person, IN, HM, np.random.default_rng(0), aug)
    x_in, y_in = 48 - S * 20, 64 - S * 30
    assert weights[6] == 1 and weights[5] == 0
    assert heatmaps[5].max() == 0
    assert _peak(heatmaps[6]) == (round(x_in / STRIDE), round(y_in / STRIDE))


def test_unlabelled_and_far_away_joints_get_zero_weight():
    # v = 0: unlabelled; v = 1: labelled but hidden, it counts (COCO, MMPose); the ankle lies
    # 300 pixels below the box, far beyond the crop and its Gaussian's 3-sigma reach
    person = _person({0: (CX, CY, 0), 1: (CX + 5, CY, 1), 2: (CX - 5, CY, 2), 15: (CX, CY + 300, 2)})
    image = np.zeros(IMAGE + (3,), np.uint8)
    _, heatmaps, weights = make_sample(image, person, IN, HM, np.random.default_rng(0), Augment.off())
    assert weights[0] == 0 and heatmaps[0].max() == 0
    assert weights[1] == 1 and weights[2] == 1
    assert weights[15] == 0 and heatmaps[15].max() == 0


def test_gaussian_is_cut_at_the_border_and_keeps_its_weight():
    # a joint just outside the heatmap (1 heatmap pixel left of it) still has part of its Gaussian on it
    heatmaps, weights = heatmap_targets(np.array([[-4.0, 40.0]]), np.array([True]), HM, STRIDE, 2.0)
    assert weights[0] == 1
    assert heatmaps[0, 10, 0] == pytest.approx(np.exp(-1 / 8))    # one pixel from the centre, sigma 2


def _dot_image(xy) -> np.ndarray:
    """A black image with a 5x5 white square centred on the pixel xy."""
    image = np.zeros(IMAGE + (3,), np.uint8)
    x, y = (int(round(v)) for v in xy)
    image[y - 2:y + 3, x - 2:x + 3] = 255
    return image


def test_augmentation_moves_image_and_keypoints_together():
    # a dot drawn on the left wrist (9) must be found, in the augmented crop, where the augmented
    # keypoint of the wrist is: joint 9, or joint 10 when the crop is mirrored
    rng = np.random.default_rng(7)
    joints = {k: (CX + rng.uniform(-30, 30), CY + rng.uniform(-45, 45), 2) for k in range(17)}
    joints[9] = (150.0, 120.0, 2)
    person = _person(joints)
    image = _dot_image(joints[9][:2])
    aug = dataclasses.replace(Augment(), half_body_prob=0.5)     # every kind of change, often
    checked = flips = 0
    for i in range(60):
        M, kp, visible, flipped = sample_transform(person, IMAGE, IN, np.random.default_rng(i), aug)
        crop = warp(image, M, IN)[..., 0].astype(np.float64)
        wrist = kp[COCO.flip_index[9]] if flipped else kp[9]
        if not (6 < wrist[0] < IN[1] - 6 and 6 < wrist[1] < IN[0] - 6):
            continue                                     # the crop left the dot out
        ys, xs = np.nonzero(crop)
        w = crop[ys, xs]
        found = np.array([(xs * w).sum(), (ys * w).sum()]) / w.sum()   # the dot's centroid
        # bilinear resampling moves a blob's centroid by well under half a pixel
        np.testing.assert_allclose(found, wrist, atol=0.5)
        checked += 1
        flips += flipped
    assert checked >= 30 and 5 <= flips <= checked - 5   # both branches ran, many times


def _write_coco(tmp_path, annotations, images=("a.png",)):
    data = {"images": [{"id": i + 1, "file_name": f, "width": 320, "height": 240} for i, f in enumerate(images)],
            "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def _ann(id_, image_id=1, v=2, crowd=0):
    kp = [150, 120, v] * 17
    return {"id": id_, "image_id": image_id, "category_id": 1, "keypoints": kp, "num_keypoints": 17 if v else 0,
            "area": 500.0, "bbox": [100, 50, 75, 100], "iscrowd": crowd}


def test_dataset_counts_skipped_persons_and_missing_images(tmp_path):
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((240, 320, 3), np.uint8))
    ann = _write_coco(tmp_path, [_ann(1), _ann(2, v=0), _ann(3, image_id=2)], images=("a.png", "b.png"))
    data = load_train_set(ann, tmp_path / "images")
    assert len(data.persons) == 1
    assert data.skipped_unlabelled == 1
    assert data.missing == [f"{tmp_path / 'images' / 'b.png'}: no such file"] and data.missing_persons == 1


def test_dataset_refuses_an_empty_image_folder(tmp_path):
    (tmp_path / "images").mkdir()
    ann = _write_coco(tmp_path, [_ann(1)])
    with pytest.raises(TrainDataError, match="none of the 1 images"):
        load_train_set(ann, tmp_path / "images")


def test_dataset_refuses_a_file_that_is_not_coco_keypoints(tmp_path):
    (tmp_path / "images").mkdir()
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": [], "annotations": [{"id": 1, "bbox": [0, 0, 1, 1]}],
                                "categories": [{"id": 1}]}))
    with pytest.raises(DataError, match="keypoints"):
        load_train_set(path, tmp_path / "images")
