"""The top-down pipeline (refpose/pose/pipeline.py): the flip test, estimate and predict, records.

Expected values come from a fake network whose answer is known by construction, or from the
pipeline's own steps run one image at a time — never from the code under test.
"""
import json
import types

import numpy as np
import pytest

import refpose
from refpose.errors import BoxError, DataError, InputShapeError
from refpose.keypoints import COCO
from refpose.config import IMAGENET_MEAN as MEAN, IMAGENET_STD as STD
from refpose.pose.pipeline import PoseOptions, estimate, predict, predict_images, to_coco_records

from test_decode import gaussians

COCO_KEYPOINTS, FLIP_INDEX = COCO.names, COCO.flip_index


# --- the flip test with a network whose answer is known ----------------------------------------------
# The "person" is 17 coloured squares; joints of a left/right pair share a colour. The fake
# network finds each colour's pixels in its (denormalised) input and, like a real network facing
# a frontal person, calls the pixels on the image's right the person's *left* joint. It renders
# a Gaussian at (centroid / 4) in heatmap pixels: MMPose's target convention (heatmap pixel j is
# input pixel 4j). It is mirror-equivariant with left/right swapped, exactly, by construction.
PAIR_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255),
                (0, 255, 255), (255, 128, 0), (128, 0, 255), (0, 128, 255)]   # nose, then each pair


class MarkerNet:
    def __init__(self, input_size=(256, 192)):
        self.config = types.SimpleNamespace(input_size=input_size)
        self.dtype = np.dtype("float64")

    def __call__(self, x):
        N, _, H, W = x.shape
        rgb = np.round((x.transpose(0, 2, 3, 1) * STD + MEAN) * 255)          # (N, H, W, 3)
        out = np.zeros((N, 17, H // 4, W // 4))
        for n in range(N):
            for g, colour in enumerate(PAIR_COLOURS):
                v, u = np.nonzero((rgb[n] == colour).all(axis=-1))
                if g == 0:
                    out[n, 0] = gaussians(np.array([[u.mean(), v.mean()]]) / 4, (H // 4, W // 4))[0]
                    continue
                left, right = 2 * g - 1, 2 * g                                   # COCO: odd left, even right
                on_right = u > u.mean()
                for k, sel in ((left, on_right), (right, ~on_right)):
                    out[n, k] = gaussians(np.array([[u[sel].mean(), v[sel].mean()]]) / 4, (H // 4, W // 4))[0]
        return out


# Marker centres in crop pixels (u, v). u and v are odd, so u/4 and v/4 are never a half pixel
# away from two pixels at once (no argmax ties, which would break the mirror symmetry).
MARKERS = {0: (97, 41), 1: (113, 33), 2: (81, 33), 3: (129, 45), 4: (65, 45), 5: (137, 81), 6: (57, 81),
           7: (149, 121), 8: (45, 121), 9: (153, 157), 10: (37, 161), 11: (121, 149), 12: (73, 149),
           13: (125, 193), 14: (69, 189), 15: (129, 225), 16: (63, 229)}
IMAGE_H, IMAGE_W = 400, 300
CX, CY = 150, 200
# a box whose padded, aspect-fixed region is exactly 192x256 around (CX, CY): the crop is a pure
# translation, crop(u, v) = image(u + CX - 96, v + CY - 128)
BOX = [CX - 76.8, CY - 102.4, 153.6, 204.8]


def marker_image():
    image = np.full((IMAGE_H, IMAGE_W, 3), 128, np.uint8)
    for k, (u, v) in MARKERS.items():
        g = (k + 1) // 2
        x, y = u + CX - 96, v + CY - 128
        image[y - 2:y + 3, x - 2:x + 3] = PAIR_COLOURS[g]
    return image


def test_fake_network_sees_the_markers_where_they_are():
    pose = estimate(marker_image(), MarkerNet(), [BOX], dark=True)[0]
    expected = np.array([(u + CX - 96, v + CY - 128) for u, v in (MARKERS[k] for k in range(17))])
    # DARK recovers a Gaussian's centre within 0.05 heatmap px (test above) = 0.2 image px here
    assert np.abs(pose["keypoints"][:, :2] - expected).max() <= 0.2


@pytest.mark.parametrize("dark", [False, True])
def test_mirrored_image_gives_mirrored_keypoints_without_flip_test(dark):
    # Mirror the image (x -> W-1-x) and the box with it (centre -> W-1-centre): the crop is the
    # original crop mirrored about u = 96, the heatmaps are mirrored about the heatmap pixel 24,
    # and decoding is symmetric, so the keypoints mirror exactly, left and right swapped.
    image = marker_image()
    mirrored = np.ascontiguousarray(image[:, ::-1])
    box_m = [IMAGE_W - 1 - BOX[0] - BOX[2], BOX[1], BOX[2], BOX[3]]
    net = MarkerNet()
    a = estimate(image, net, [BOX], dark=dark)[0]["keypoints"]
    b = estimate(mirrored, net, [box_m], dark=dark)[0]["keypoints"]
    b = b[list(FLIP_INDEX)]                                                 # joint k of the mirror image
    np.testing.assert_allclose(b[:, 0], IMAGE_W - 1 - a[:, 0], rtol=0, atol=1e-6)   # float64 rounding
    np.testing.assert_allclose(b[:, 1:], a[:, 1:], rtol=0, atol=1e-6)


def test_flip_test_with_hrnet_shift():
    # The mirrored crop's markers are at 191 - u; flipped back (47 - j) and shifted one heatmap px
    # (HRNet), the mirror branch's Gaussian sits at (u + 1) / 4: the average of the two branches
    # peaks at (u + 0.5) / 4 by symmetry, i.e. +0.5 input px in x; y is unchanged. Without the
    # left/right swap or the flip back the average would mix joints tens of pixels apart, and
    # without the shift it would peak 1.5 px to the left.
    image = marker_image()
    net = MarkerNet()
    pose = estimate(image, net, [BOX], flip=True, dark=True)[0]
    expected = np.array([(u + 0.5 + CX - 96, v + CY - 128) for u, v in (MARKERS[k] for k in range(17))])
    # 0.2 image px = DARK's 0.05 heatmap px; the two-Gaussian average is symmetric about its peak
    assert np.abs(pose["keypoints"][:, :2] - expected).max() <= 0.2
    # and the mirrored image: mirrored keypoints, left and right swapped, both moved +0.5 px
    mirrored = np.ascontiguousarray(image[:, ::-1])
    box_m = [IMAGE_W - 1 - BOX[0] - BOX[2], BOX[1], BOX[2], BOX[3]]
    b = estimate(mirrored, net, [box_m], flip=True, dark=True)[0]["keypoints"][list(FLIP_INDEX)]
    assert np.abs(b[:, 0] - (IMAGE_W - 1 - expected[:, 0] + 1.0)).max() <= 0.2
    assert np.abs(b[:, 1] - expected[:, 1]).max() <= 0.2


# --- estimate on the real network ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    # the plain NumPy ops: these tests are about the pipeline around the network, not its kernels
    return refpose.build("tiny", seed=0, impl="reference")


def test_estimate_shapes_and_keypoints_inside_the_image(tiny_model):
    image = np.random.default_rng(3).integers(0, 256, (150, 230, 3), dtype=np.uint8)
    boxes = [[10, 20, 60, 100], [-20, -30, 80, 90], [150, 40, 79, 109]]
    for flip, dark in ((False, False), (True, True)):
        poses = estimate(image, tiny_model, boxes, box_scores=[0.9, 0.5, 1.0], flip=flip, dark=dark,
                         return_heatmaps=True)
        assert len(poses) == 3
        for p, box in zip(poses, boxes):
            assert p["bbox"] == [float(v) for v in box]
            k = p["keypoints"]
            assert k.shape == (17, 3) and np.isfinite(k).all()
            assert (k[:, 0] >= 0).all() and (k[:, 0] <= 229).all()
            assert (k[:, 1] >= 0).all() and (k[:, 1] <= 149).all()
    # each box is estimated on its own: batching does not mix boxes
    alone = estimate(image, tiny_model, boxes[1:2], flip=True, dark=True, return_heatmaps=True)[0]
    # float32 sums in another order (batch size changes the BLAS blocking): ~1e-6 relative
    np.testing.assert_allclose(alone["heatmaps"], poses[1]["heatmaps"], rtol=1e-4, atol=1e-5)


def test_estimate_default_box_is_the_whole_image(tiny_model):
    image = np.zeros((60, 80, 3), np.uint8)
    pose = estimate(image, tiny_model)[0]
    assert pose["bbox"] == [0.0, 0.0, 80.0, 60.0]
    np.testing.assert_allclose(pose["center"], [40, 30])
    np.testing.assert_allclose(pose["scale"], [80 * 1.25, 80 / 0.75 * 1.25])
    assert estimate(image, tiny_model, np.zeros((0, 4))) == []


def test_estimate_rejects_bad_boxes_and_images(tiny_model):
    image = np.zeros((60, 80, 3), np.uint8)
    with pytest.raises(BoxError, match="outside"):
        estimate(image, tiny_model, [[100, 10, 10, 10]])
    with pytest.raises(BoxError, match="zero area"):
        estimate(image, tiny_model, [[10, 10, 0, 10]])
    with pytest.raises(BoxError, match="shape"):
        estimate(image, tiny_model, [[1, 2, 3]])
    with pytest.raises(InputShapeError):
        estimate(image.astype(np.float32), tiny_model)
    with pytest.raises(InputShapeError):
        estimate(image[..., 0], tiny_model)


def test_estimate_heatmaps_on_request(tiny_model):
    image = np.zeros((60, 80, 3), np.uint8)
    pose = estimate(image, tiny_model, return_heatmaps=True)[0]
    assert pose["heatmaps"].shape == (17, 32, 24)        # tiny: input 128x96, heatmaps a quarter
    assert "heatmaps" not in estimate(image, tiny_model)[0]


# --- predict: the pipeline that infer, eval and validation share --------------------------------------
@pytest.fixture(scope="module")
def tiny_model64():
    # float64 reference ops: results do not depend on how the crops are batched (to ~1e-12)
    return refpose.build("tiny", seed=0, dtype="float64", impl="reference")


def test_predict_is_estimate_then_records(tiny_model64):
    image = np.random.default_rng(5).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    boxes = [[5, 5, 40, 80], [50, 10, 30, 60]]
    poses, records = predict(image, tiny_model64, boxes, [0.8, 0.6], PoseOptions(flip=True), image_id=42)
    want = estimate(image, tiny_model64, boxes, box_scores=[0.8, 0.6], flip=True)
    assert [p["score"] for p in poses] == [p["score"] for p in want]
    assert records == to_coco_records(want, image_id=42)


def test_predict_oks_nms_drops_the_same_person_scored_lower(tiny_model64):
    image = np.random.default_rng(6).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    box, other = [5, 5, 40, 80], [50, 10, 30, 60]
    # the first box twice: the same crop, the same pose (OKS 1 > 0.9), so the lower-scored copy goes
    poses, records = predict(image, tiny_model64, [box, other, box], [0.9, 0.6, 0.3],
                             PoseOptions(oks_nms=0.9), file_name="a.jpg")
    kept = estimate(image, tiny_model64, [box, other], box_scores=[0.9, 0.6])
    assert sorted(r["score"] for r in records) == sorted(p["score"] for p in kept)
    assert len(poses) == 2 and all(r["file_name"] == "a.jpg" for r in records)


def test_predict_images_batches_images_as_predicting_each(tiny_model64):
    rng = np.random.default_rng(7)
    items = [(rng.integers(0, 256, (100, 80, 3), dtype=np.uint8), [[5, 5, 40, 60], [30, 20, 40, 70]], None, 1, None),
             (rng.integers(0, 256, (60, 70, 3), dtype=np.uint8), None, None, 2, None),
             (rng.integers(0, 256, (50, 50, 3), dtype=np.uint8), np.zeros((0, 4)), None, 3, None)]
    together = predict_images(items, tiny_model64, PoseOptions(flip=True))
    assert [len(poses) for poses, _ in together] == [2, 1, 0]
    for item, (poses, records) in zip(items, together):
        alone_poses, alone_records = predict(item[0], tiny_model64, item[1], options=PoseOptions(flip=True),
                                             image_id=item[3])
        assert [r["image_id"] for r in records] == [r["image_id"] for r in alone_records]
        for a, b in zip(records, alone_records):
            # float64, the same arithmetic in another batch: 1e-9 px is far above its rounding
            np.testing.assert_allclose(a["keypoints"], b["keypoints"], rtol=0, atol=1e-9)


def test_predict_images_keep_going_returns_the_error_of_a_refused_image(tiny_model64):
    rng = np.random.default_rng(8)
    good = (rng.integers(0, 256, (60, 50, 3), dtype=np.uint8), None, None, 1, None)
    bad = (rng.integers(0, 256, (60, 50, 3), dtype=np.uint8), [[100, 100, 10, 10]], None, 2, None)  # outside
    with pytest.raises(BoxError):
        predict_images([good, bad], tiny_model64)
    first, second = predict_images([good, bad], tiny_model64, keep_going=True)
    assert isinstance(second, BoxError) and "outside" in str(second)
    assert first[1] == predict(good[0], tiny_model64, image_id=1)[1]


# --- records ---------------------------------------------------------------------------------
def test_to_coco_records():
    kp = np.arange(51, dtype=np.float64).reshape(17, 3)
    poses = [{"bbox": [1, 2, 3, 4], "keypoints": kp, "score": 0.5}]
    r = to_coco_records(poses, image_id=785)[0]
    assert r == {"image_id": 785, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0],
                 "keypoints": [float(v) for v in range(51)], "score": 0.5}
    r = to_coco_records(poses, file_name="a.jpg")[0]
    assert r["file_name"] == "a.jpg" and "image_id" not in r
    json.dumps(r)                                        # plain Python types only
    with pytest.raises(DataError):
        to_coco_records(poses)
