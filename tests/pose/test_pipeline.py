"""Tests of the top-down pipeline (refpose/topdown.py): boxes, affine crop, decoding, flip test.

Expected values are worked by hand from the conventions (HRNet / MMPose), come from closed
forms (a Gaussian placed at a known sub-pixel position, the similarity transform of a box),
or from a fake network whose answer is known by construction — never from the code under test.
"""
import json
import types

import numpy as np
import pytest

import refpose
from refpose.errors import BoxError, DataError, InputShapeError
from refpose.keypoints import COCO
from refpose.pose.crop import MEAN, STD, affine_points, box_to_center_scale, check_box, crop_person, get_affine_transform, normalize
from refpose.pose.pipeline import PoseOptions, estimate, predict, predict_images, to_coco_records
from refpose.pose.decode import decode_heatmaps, flip_back, instance_score
from refpose.pretrained import default_model, default_weights_path

COCO_KEYPOINTS, FLIP_INDEX = COCO.names, COCO.flip_index

SIGMA = 2.0      # the Gaussian of MMPose's 256x192 COCO targets (and of DARK's blur for kernel 11)


def gaussians(centres: np.ndarray, size=(64, 48), sigma=SIGMA) -> np.ndarray:
    """Heatmaps (N, h, w) with a unit Gaussian at each (x, y) of `centres` (N, 2)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = centres[:, 0, None, None], centres[:, 1, None, None]
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))


# --- boxes -----------------------------------------------------------------------------------------
def test_box_to_center_scale_hand_worked():
    # tall box: 30 < 0.75 * 80, so the width grows to 60; then x 1.25
    c, s = box_to_center_scale([10, 20, 30, 80], 192 / 256)
    np.testing.assert_allclose(c, [25, 60], rtol=0, atol=1e-12)
    np.testing.assert_allclose(s, [75, 100], rtol=0, atol=1e-12)
    # wide box: 100 > 0.75 * 50, so the height grows to 100 / 0.75
    c, s = box_to_center_scale([0, 0, 100, 50], 0.75)
    np.testing.assert_allclose(c, [50, 25], rtol=0, atol=1e-12)
    np.testing.assert_allclose(s, [125, 125 / 0.75], rtol=0, atol=1e-12)


@pytest.mark.parametrize("box, problem", [
    ([10, 10, 0, 20], "zero area"), ([10, 10, 20, -1], "zero area"),
    ([100, 10, 20, 20], "outside"), ([-30, 10, 30, 20], "outside"), ([10, 80, 5, 5], "outside"),
    ([np.nan, 0, 5, 5], "not finite")])
def test_check_box_rejects(box, problem):
    with pytest.raises(BoxError, match=problem):
        check_box(box, (80, 100))          # image 100 wide, 80 high


def test_check_box_accepts_a_box_partly_outside():
    np.testing.assert_array_equal(check_box([-5, -5, 20, 20], (80, 100)), [-5, -5, 20, 20])


# --- affine crop -----------------------------------------------------------------------------------
def test_affine_matches_the_similarity_of_the_box():
    # closed form for rotation 0: x' = k (x - cx) + W/2, y' = k (y - cy) + H/2 with k = W / scale_w
    center, scale = np.array([123.4, 567.8]), np.array([300.0, 400.0])
    M = get_affine_transform(center, scale, (256, 192))
    k = 192 / 300
    expected = np.array([[k, 0, 96 - k * 123.4], [0, k, 128 - k * 567.8]])
    np.testing.assert_allclose(M, expected, rtol=0, atol=1e-9)   # float64 solve of a 3x3 system


def test_affine_round_trip_within_1e6_px():
    rng = np.random.default_rng(0)
    for _ in range(20):
        center = rng.uniform(-100, 2000, 2)
        scale = rng.uniform(5, 3000) * np.array([0.75, 1.0])
        M = get_affine_transform(center, scale, (256, 192))
        M_inv = get_affine_transform(center, scale, (256, 192), inv=True)
        pts = rng.uniform(-500, 2500, (50, 2))
        back = affine_points(affine_points(pts, M), M_inv)
        assert np.abs(back - pts).max() < 1e-6          # the bound; float64 gives ~1e-12


def test_crop_moves_an_impulse_where_the_affine_says():
    # scale equal to the output size: a pure integer translation, so warpAffine copies pixels exactly
    image = np.zeros((300, 400, 3), np.uint8)
    image[150, 230] = (255, 10, 20)
    center, scale = (200.0, 140.0), (192.0, 256.0)      # output pixel (u, v) = image (u + 104, v + 12)
    crop = crop_person(image, center, scale, (256, 192))
    assert crop.shape == (256, 192, 3)
    ys, xs = np.nonzero(crop.any(axis=2))
    assert (ys.tolist(), xs.tolist()) == ([138], [126])
    assert crop[138, 126].tolist() == [255, 10, 20]


def test_crop_samples_the_image_at_the_inverse_affine():
    # a linear ramp: bilinear sampling reproduces it, so crop(u, v) = ramp(M_inv (u, v))
    H, W = 400, 500
    yy, xx = np.mgrid[0:H, 0:W]
    ramp = 20 + 0.3 * xx + 0.2 * yy                                  # 20 .. 249.5
    image = np.repeat(np.round(ramp)[..., None], 3, axis=2).astype(np.uint8)
    center, scale = np.array([251.3, 198.7]), np.array([213.0, 284.0])
    crop = crop_person(image, center, scale, (256, 192)).astype(np.float64)
    M_inv = get_affine_transform(center, scale, (256, 192), inv=True)
    v, u = np.mgrid[0:256, 0:192]
    x, y = np.moveaxis(affine_points(np.stack([u, v], axis=-1), M_inv), -1, 0)
    inside = (x >= 1) & (x <= W - 2) & (y >= 1) & (y <= H - 2)
    assert inside.mean() > 0.9
    # 1 grey level: the stored ramp is rounded (0.5) and the crop is rounded again (0.5);
    # OpenCV's 1/32-pixel sample positions add at most (0.3 + 0.2) / 32
    assert np.abs(crop[..., 0][inside] - (20 + 0.3 * x + 0.2 * y)[inside]).max() <= 1.0 + 0.5 / 32


def test_normalize_is_imagenet_statistics_in_nchw():
    crops = np.zeros((1, 2, 3, 3), np.uint8)
    crops[0, 1, 2] = (255, 128, 0)
    x = normalize(crops)
    assert x.shape == (1, 3, 2, 3) and x.dtype == np.float32
    expected = [(1 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    np.testing.assert_allclose(x[0, :, 1, 2], expected, rtol=1e-6)   # float32
    np.testing.assert_allclose(x[0, 0, 0, 0], -0.485 / 0.229, rtol=1e-6)


# --- decoding ---------------------------------------------------------------------------------------
def random_centres(n, rng, size=(64, 48), margin=4):
    h, w = size
    return np.stack([rng.uniform(margin, w - 1 - margin, n), rng.uniform(margin, h - 1 - margin, n)], axis=-1)


def test_argmax_with_quarter_shift_within_quarter_pixel():
    rng = np.random.default_rng(1)
    centres = random_centres(17 * 20, rng)
    hm = gaussians(centres).reshape(20, 17, 64, 48)
    coords, scores = decode_heatmaps(hm)
    err = np.abs(coords.reshape(-1, 2) - centres)
    # the argmax is within 1/2 px of the centre and the shift of 1/4 px goes its way: |error| <= 1/4
    assert err.max() <= 0.25 + 1e-12
    # score = the heatmap's maximum = the Gaussian at the nearest pixel
    nearest = np.round(centres)
    expected = np.exp(-((nearest - centres) ** 2).sum(axis=1) / (2 * SIGMA ** 2))
    np.testing.assert_allclose(scores.reshape(-1), expected, rtol=1e-12)


def test_dark_within_005_pixel():
    rng = np.random.default_rng(2)
    centres = random_centres(17 * 20, rng)
    hm = gaussians(centres).reshape(20, 17, 64, 48)
    coords, _ = decode_heatmaps(hm, dark=True)
    assert np.abs(coords.reshape(-1, 2) - centres).max() <= 0.05       # the bound


def test_quarter_shift_hand_worked():
    hm = np.zeros((1, 2, 8, 8))
    hm[0, 0, 3, 4], hm[0, 0, 3, 5], hm[0, 0, 2, 4] = 1.0, 0.5, 0.2      # higher neighbours right and up
    hm[0, 1, 5, 1], hm[0, 1, 5, 2] = 1.0, 0.9                          # x = 1: MMPose does not move x
    coords, scores = decode_heatmaps(hm)
    np.testing.assert_array_equal(coords[0], [[4.25, 2.75], [1.0, 5.0]])
    np.testing.assert_array_equal(scores[0], [1.0, 1.0])


def test_non_positive_heatmap_has_no_location():
    hm = -np.ones((1, 1, 6, 6))
    hm[0, 0, 2, 3] = -0.5
    coords, scores = decode_heatmaps(hm)
    np.testing.assert_array_equal(coords[0, 0], [-1, -1])             # MMPose: location -1
    assert scores[0, 0] == -0.5


def test_flip_back_hand_worked():
    hm = np.zeros((1, 17, 2, 5))
    hm[0, 5, 1, 1] = 1.0          # left shoulder, column 1 of 5
    hm[0, 0, 0, 4] = 2.0          # nose, last column
    out = flip_back(hm)
    expected = np.zeros_like(hm)
    expected[0, 6, 1, 4] = 1.0    # right shoulder: column 5 - 1 - 1 = 3, shifted right to 4
    expected[0, 0, 0, 0] = 2.0    # nose: column 0 after mirroring; the shift copies it to column 1 ...
    expected[0, 0, 0, 1] = 2.0    # ... and column 0 keeps its value (HRNet's in-place shift)
    np.testing.assert_array_equal(out, expected)


def test_flip_index_swaps_left_and_right():
    for k, name in enumerate(COCO_KEYPOINTS):
        mirror = name.replace("left", "@").replace("right", "left").replace("@", "right")
        assert COCO_KEYPOINTS[FLIP_INDEX[k]] == mirror


def test_instance_score_hand_worked():
    s = np.array([0.1, 0.2, 0.3, 0.5, 0.9] + [0.0] * 12)
    assert instance_score(s, 0.8) == pytest.approx(0.8 * (0.3 + 0.5 + 0.9) / 3, rel=1e-15)
    assert instance_score(np.full(17, 0.2)) == 0.0      # strictly above 0.2, as HRNet and MMPose


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


# --- default model --------------------------------------------------------------------------------
def test_default_model_prefers_the_weights_file_then_seeded_init(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if default_weights_path("tiny") is not None:
        pytest.skip("the source checkout has its own weights/tiny.safetensors")
    model = default_model(config="tiny")
    assert model.trained is False and model.config.name == "tiny"
    refpose.save_weights(tmp_path / "weights" / "tiny.safetensors", refpose.init_weights("tiny", 5), "tiny",
                         trained=True)
    model = default_model(config="tiny")
    assert model.trained is True and model.source.endswith("tiny.safetensors")
    assert default_model(weights=tmp_path / "weights" / "tiny.safetensors").config.name == "tiny"
