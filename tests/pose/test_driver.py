"""The image driver (refpose/pose/driver.py): image files and frames in, one result per image, in order.

Expected results come from the pipeline run on one image at a time (`estimate`, `predict`), which
the driver must reproduce whatever the grouping of images into forward passes.
"""
import cv2
import numpy as np
import pytest

import refpose
from refpose.errors import BoxError, ImageError
from refpose.pose import pipeline
from refpose.pose.driver import ImageInput, run_images
from refpose.pose.pipeline import PoseOptions, estimate


@pytest.fixture(scope="module")
def model():
    # the fast path in float32: a crop's output does not depend on its place in a batch, bit for bit
    return refpose.build("tiny", seed=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Five small photos of random pixels, of different sizes, as files."""
    root = tmp_path_factory.mktemp("driver")
    rng = np.random.default_rng(3)
    paths = []
    for i, (h, w) in enumerate([(120, 90), (200, 160), (96, 128), (150, 150), (80, 60)]):
        path = root / f"{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths.append(str(path))
    return paths


def test_results_are_those_of_each_image_alone_in_any_grouping(model, images):
    inputs = [ImageInput(path=p, file_name=p) for p in images]
    alone = [estimate(refpose.read_image(p), model) for p in images]
    for per_forward in (1, 2, 5):
        results = list(run_images(inputs, model, per_forward=per_forward))
        assert [r.input.path for r in results] == images
        for r, expected in zip(results, alone):
            assert r.error is None and len(r.poses) == 1
            np.testing.assert_array_equal(r.poses[0]["keypoints"], expected[0]["keypoints"])
            assert r.records[0]["file_name"] == r.input.path and r.records[0]["score"] == expected[0]["score"]


def test_crops_of_several_images_share_one_forward(model, images, monkeypatch):
    calls = []
    real = pipeline.predict_heatmaps
    monkeypatch.setattr(pipeline, "predict_heatmaps", lambda m, x, flip=False: calls.append(len(x)) or real(m, x, flip))
    boxes = np.array([[0, 0, 40, 60], [10, 10, 30, 30]], float)
    list(run_images([ImageInput(path=p, boxes=boxes, image_id=i) for i, p in enumerate(images)], model,
                    per_forward=4))
    assert calls == [8, 2]                 # 4 images x 2 boxes, then the fifth image's 2


def test_an_image_that_fails_does_not_stop_the_others(model, images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    inputs = [ImageInput(path=images[0], image_id=0), ImageInput(path=str(broken), image_id=1),
              ImageInput(path=images[1], boxes=np.array([[500.0, 500, 10, 10]]), image_id=2),   # outside the image
              ImageInput(path=str(tmp_path / "missing.png"), image_id=3), ImageInput(path=images[2], image_id=4)]
    results = list(run_images(inputs, model))
    assert [r.error is None for r in results] == [True, False, False, False, True]
    assert isinstance(results[1].error, ImageError) and str(results[1].error).startswith(str(broken))
    assert isinstance(results[2].error, BoxError) and str(results[2].error).startswith(images[1])
    assert "no such file" in str(results[3].error)
    assert len(results[4].records) == 1 and results[4].records[0]["image_id"] == 4


def test_an_image_without_boxes_is_only_looked_for(model, images, tmp_path, monkeypatch):
    from refpose.pose import imageio
    monkeypatch.setattr(imageio, "read_image", lambda *a, **k: pytest.fail("decoded an image with no box"))
    none = np.zeros((0, 4))
    results = list(run_images([ImageInput(path=images[0], boxes=none, image_id=1),
                               ImageInput(path=str(tmp_path / "gone.png"), boxes=none, image_id=2)], model))
    assert results[0].error is None and results[0].poses == [] and results[0].records == []
    assert isinstance(results[1].error, ImageError) and "no such file" in str(results[1].error)


def test_pixels_given_and_kept(model):
    frame = np.random.default_rng(0).integers(0, 256, (100, 80, 3), dtype=np.uint8)
    (r,) = run_images([ImageInput(image=frame, image_id=7)], model, keep_images=True)
    assert r.image is frame and r.records[0]["image_id"] == 7
    (r,) = run_images([ImageInput(image=frame, image_id=7)], model)
    assert r.image is None


def test_detector_boxes_and_their_scores_in_the_records(model, images):
    box = np.array([[5.0, 5.0, 50.0, 70.0]])

    def detector(image):
        return box, np.array([0.7])
    (r,) = run_images([ImageInput(path=images[1], image_id=1)], model, PoseOptions(flip=True), detector=detector)
    expected = estimate(refpose.read_image(images[1]), model, box, box_scores=[0.7], flip=True)[0]
    assert r.records[0]["box_score"] == 0.7 and r.records[0]["bbox"] == [5.0, 5.0, 50.0, 70.0]
    assert r.records[0]["score"] == pytest.approx(expected["score"], rel=0, abs=0)
    (r,) = run_images([ImageInput(path=images[1], image_id=1)], model)           # no detector: no box_score
    assert "box_score" not in r.records[0]


def test_refine_runs_in_order_before_the_records(model, images):
    seen = []

    def refine(poses, inp):
        seen.append(inp.image_id)
        return [{**p, "track_id": 10 + inp.image_id, "score": 0.25} for p in poses]
    results = list(run_images([ImageInput(path=p, image_id=i) for i, p in enumerate(images)], model,
                              refine=refine, per_forward=2))
    assert seen == [0, 1, 2, 3, 4]
    assert [(r.records[0]["track_id"], r.records[0]["score"]) for r in results] == [(10 + i, 0.25) for i in range(5)]
