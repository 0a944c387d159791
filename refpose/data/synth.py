"""Synthetic COCO person-keypoints data: articulated stick figures on cluttered backgrounds.

For smoke tests of training, evaluation and ports only; it is no substitute for COCO.

Each image holds a few figures with the 17 COCO joints (a head with nose, eyes and ears;
shoulders, elbows, wrists, hips, knees, ankles) in random poses, sizes, colours and in-plane
rotations, drawn over random shapes, lines, limb-like distractors, gradients and noise.
The person's left side is drawn in a lighter shade than the right, so a horizontal flip
with the dataset's flip pairs is learnable. The figures face the camera: the person's left
is on the image's right before rotation.

Labels follow the COCO format (cocodataset.org/#format-data):
- visibility 2 when the joint's pixel shows the figure itself, 1 when a figure or an
  occluder drawn later covers it (labelled, not visible), 0 with x = y = 0 when the joint
  lies outside the image;
- `bbox` is the tight box of every pixel the figure drew inside the image (hidden parts
  included, so that every labelled joint is in the box); `area` is the box's area, as
  keypoint datasets without segmentations take it (stick limbs cover far less of their box
  than a real body does, so their pixel count would make OKS much stricter than on COCO).

A scene is sampled first as plain data (`sample_scene`), then drawn (`render`), so the
same scene can be drawn without one of its figures: that is how the tests check that the
labels sit on what was drawn. Everything is drawn without anti-aliasing, so a pixel holds
the colour of the last shape that covered it and the occlusion labels are exact.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import RefposeError
from ..fileio import absolute_path, hold, path_problem, release, sweep_temporaries, temporary_path
from ..keypoints import COCO

DEFAULT_SIZE = (320, 240)            # width, height
DEFAULT_PERSONS = (1, 4)
JPEG_QUALITY = 90
MAX_SIDE = 4096
MAX_PERSONS = 20
SHIFT = 4                            # cv2 sub-pixel bits: coordinates are drawn to 1/16 pixel
ANN_NAME = "annotations.json"
IMAGE_DIR = "images"


class SynthError(RefposeError, ValueError):
    """A synthetic dataset that cannot be written as asked (bad size, counts, or output folder)."""


# --- the figure's skeleton ------------------------------------------------------------------
# Body frame in units of the figure's height: x to the image's right, y down, origin at the
# mid-hip. Rough adult proportions (head ~1/8 of the height, legs ~1/2, arms ~0.4).
J = {name: i for i, name in enumerate(COCO.names)}
SHOULDER_HALF, HIP_HALF, TORSO = 0.12, 0.085, 0.30
UPPER_ARM, FOREARM, THIGH, SHIN = 0.17, 0.15, 0.235, 0.235
NECK, HEAD_RX, HEAD_RY = 0.095, 0.055, 0.07
# (parent joint, child joint, length, side): side +1 is the person's left (image right)
LIMBS = (
    ("left_shoulder", "left_elbow", UPPER_ARM, +1), ("left_elbow", "left_wrist", FOREARM, +1),
    ("right_shoulder", "right_elbow", UPPER_ARM, -1), ("right_elbow", "right_wrist", FOREARM, -1),
    ("left_hip", "left_knee", THIGH, +1), ("left_knee", "left_ankle", SHIN, +1),
    ("right_hip", "right_knee", THIGH, -1), ("right_knee", "right_ankle", SHIN, -1),
)


def _unit(angle: float) -> np.ndarray:
    return np.array([math.cos(angle), math.sin(angle)])


def sample_pose(rng: np.random.Generator) -> np.ndarray:
    """Joint positions (17, 2) in the body frame, for random joint angles.

    An angle of pi/2 points down. Arms swing from hanging to raised (outwards), elbows bend
    either way; thighs swing outwards or cross a little, knees bend; the torso leans a little
    and the head turns (yaw, as a sideways shift of the face marks).
    """
    P = np.zeros((17, 2))
    lean = rng.normal(0.0, 0.12)                                  # torso lean (rad)
    up = _unit(-math.pi / 2 + lean)                               # mid-hip -> mid-shoulder
    across = np.array([-up[1], up[0]])                            # image-right in the torso frame
    width = rng.uniform(0.85, 1.15)
    neck = up * TORSO * rng.uniform(0.9, 1.1)
    for side, name in ((+1, "left"), (-1, "right")):
        P[J[f"{name}_shoulder"]] = neck + side * across * SHOULDER_HALF * width
        P[J[f"{name}_hip"]] = side * across * HIP_HALF * width
    for parent, child, length, side in LIMBS:
        down = math.atan2(-up[1], -up[0])                          # along the torso, downwards
        if parent.endswith("shoulder"):
            angle = down - side * rng.uniform(-0.35, 2.8)          # hanging .. raised above the head
        elif parent.endswith("hip"):
            angle = down - side * rng.uniform(-0.25, 1.0)
        elif parent.endswith("elbow"):
            angle = prev + rng.uniform(-2.4, 2.4)
        else:                                                      # knee: mostly bends one way
            angle = prev + side * rng.uniform(0.0, 2.0) * (1 if rng.random() < 0.5 else -0.3)
        P[J[child]] = P[J[parent]] + _unit(angle) * length * rng.uniform(0.9, 1.1)
        prev = angle
    head = neck + up * (NECK + HEAD_RY * 0.6)
    yaw = rng.uniform(-0.6, 0.6)                                  # face turned left/right

    def face(a, b):                                               # a mark on the face, turned by yaw
        return head + across * (a + yaw * 0.03) + up * b

    P[J["nose"]] = face(0.0, -0.008)
    P[J["left_eye"]], P[J["right_eye"]] = face(0.022, 0.016), face(-0.022, 0.016)
    P[J["left_ear"]] = head + across * (HEAD_RX * 0.95 + yaw * 0.01)
    P[J["right_ear"]] = head - across * (HEAD_RX * 0.95 - yaw * 0.01)
    return P


# --- shapes as data -------------------------------------------------------------------------
# A shape is a tuple (kind, colour, params...) that `_draw` paints into an image and a mask.

@dataclass
class Figure:
    joints: np.ndarray            # (17, 2) image coordinates (pixel centres are integers)
    shapes: list                  # drawn in order


@dataclass
class Scene:
    width: int
    height: int
    background: list              # shapes under the figures
    figures: list                 # Figure, back to front
    occluders: list               # shapes over the figures
    gradient: tuple               # (colour at one end, colour at the other, direction in rad)
    noise_sigma: float
    noise_seed: int
    blur: bool                    # a 3x3 Gaussian blur before the noise


def _shade(colour, factor: float) -> tuple:
    return tuple(min(255, int(c * factor)) for c in colour)


def _colour(rng, lo: int = 0, hi: int = 256) -> tuple:
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


def _figure_colour(rng) -> tuple:
    """A saturated mid-bright colour (HSV), so that both shades of it stay distinct."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(110, 256), rng.integers(120, 200)]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def make_figure(rng, width: int, height: int) -> Figure:
    """A figure placed in a width x height image: pose, size, rotation, position, colours."""
    body = sample_pose(rng)
    size = height * math.exp(rng.uniform(math.log(0.22), math.log(1.0)))   # small .. as tall as the image
    rot = rng.normal(0.0, 0.45) if rng.random() < 0.85 else rng.uniform(-math.pi, math.pi)
    R = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    centre = np.array([rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height])   # the body's middle
    body_mid = body.mean(axis=0)
    P = (body - body_mid) @ R.T * size + centre                          # (17, 2)

    base, torso_c = _figure_colour(rng), _figure_colour(rng)
    left, right = _shade(base, 1.3), _shade(base, 0.6)
    arm_t, leg_t = size * rng.uniform(0.035, 0.05), size * rng.uniform(0.045, 0.065)
    shapes = []

    def limb(a, b, t, col):
        shapes.append(("capsule", col, P[J[a]], P[J[b]], t))

    def dot(name, r, col):
        shapes.append(("circle", col, P[J[name]], r))

    for side, col in (("right", right), ("left", left)):        # legs, right one behind
        limb(f"{side}_hip", f"{side}_knee", leg_t, col)
        limb(f"{side}_knee", f"{side}_ankle", leg_t * 0.85, col)
        for j in ("knee", "ankle"):
            dot(f"{side}_{j}", leg_t * 0.55, _shade(col, 0.75))
    shapes.append(("polygon", torso_c, P[[J["left_shoulder"], J["right_shoulder"], J["right_hip"], J["left_hip"]]]))
    neck = (P[J["left_shoulder"]] + P[J["right_shoulder"]]) / 2
    head = (P[J["left_ear"]] + P[J["right_ear"]]) / 2
    shapes.append(("capsule", torso_c, neck, neck + (head - neck) * 0.6, arm_t))
    for side, col in (("right", right), ("left", left)):        # arms in front of the torso
        dot(f"{side}_shoulder", arm_t * 0.8, _shade(col, 0.75))
        dot(f"{side}_hip", leg_t * 0.6, _shade(col, 0.75))
        limb(f"{side}_shoulder", f"{side}_elbow", arm_t, col)
        limb(f"{side}_elbow", f"{side}_wrist", arm_t * 0.85, col)
        dot(f"{side}_elbow", arm_t * 0.55, _shade(col, 0.75))
        dot(f"{side}_wrist", arm_t * 0.7, _shade(col, 0.75))
    up = head - neck
    angle = math.degrees(math.atan2(up[1], up[0])) + 90.0
    skin = _colour(rng, 150, 256)
    shapes.append(("ellipse", skin, head, (HEAD_RX * size, HEAD_RY * size), angle))
    eye_r = max(size * 0.011, 0.8)
    for side, col in (("left", left), ("right", right)):
        dot(f"{side}_ear", size * 0.018, col)
        dot(f"{side}_eye", eye_r, _shade(col, 0.4))
    dot("nose", eye_r * 1.1, (200, 40, 40) if rng.random() < 0.5 else (60, 30, 20))
    return Figure(P, shapes)


def _clutter_shape(rng, width: int, height: int, scale: float) -> tuple:
    """One random background or occluder shape, about `scale` x the image's side."""
    side = min(width, height)
    c = np.array([rng.uniform(0, width), rng.uniform(0, height)])
    col = _colour(rng)
    kind = rng.integers(0, 5)
    r = side * scale * rng.uniform(0.3, 1.0)
    if kind == 0:
        return ("ellipse", col, c, (r, r * rng.uniform(0.3, 1.0)), rng.uniform(0, 180))
    if kind == 1:
        return ("polygon", col, c + rng.uniform(-r, r, (rng.integers(3, 7), 2)))
    if kind == 2:
        return ("rectangle", col, c - r * rng.uniform(0.2, 1, 2), c + r * rng.uniform(0.2, 1, 2))
    if kind == 3:                # a limb-like capsule: a distractor the network must learn to ignore
        return ("capsule", col, c, c + _unit(rng.uniform(0, 2 * math.pi)) * r * 1.5, side * rng.uniform(0.02, 0.06))
    return ("line", col, c, c + _unit(rng.uniform(0, 2 * math.pi)) * side * rng.uniform(0.2, 1.0),
            int(rng.integers(1, 5)))


def sample_scene(rng: np.random.Generator, width: int, height: int, persons: tuple[int, int]) -> Scene:
    """Everything one image shows, as data (no pixels yet)."""
    gradient = (_colour(rng), _colour(rng), float(rng.uniform(0, 2 * math.pi)))
    background = [_clutter_shape(rng, width, height, rng.uniform(0.05, 0.35))
                  for _ in range(rng.integers(8, 25))]
    figures = [make_figure(rng, width, height) for _ in range(rng.integers(persons[0], persons[1] + 1))]
    occluders = []
    for _ in range(rng.integers(0, 3)):
        shape = _clutter_shape(rng, width, height, rng.uniform(0.06, 0.2))
        if shape[0] != "line" and figures and rng.random() < 0.7:     # over a joint of some figure
            fig = figures[rng.integers(len(figures))]
            shift = fig.joints[rng.integers(17)] - shape[2]
            shape = (shape[0], shape[1]) + tuple(p + shift if isinstance(p, np.ndarray) and p.shape[-1:] == (2,)
                                                 else p for p in shape[2:])
        occluders.append(shape)
    return Scene(width, height, background, figures, occluders, gradient, noise_sigma=float(rng.uniform(2, 6)),
                 noise_seed=int(rng.integers(2**63)), blur=bool(rng.random() < 0.3))


def _fixed(p) -> np.ndarray:
    return np.round(np.asarray(p) * (1 << SHIFT)).astype(np.int32)


def _draw(canvas: np.ndarray, shape: tuple, colour=None) -> None:
    """Paint one shape (no anti-aliasing: a pixel is either covered or not)."""
    kind, col = shape[0], colour if colour is not None else shape[1]
    if kind == "capsule":
        _, _, a, b, t = shape
        cv2.line(canvas, tuple(_fixed(a)), tuple(_fixed(b)), col, max(2, int(round(t))), cv2.LINE_8, SHIFT)
    elif kind == "line":
        _, _, a, b, t = shape
        cv2.line(canvas, tuple(_fixed(a)), tuple(_fixed(b)), col, t, cv2.LINE_8, SHIFT)
    elif kind == "circle":
        _, _, c, r = shape
        cv2.circle(canvas, tuple(_fixed(c)), int(_fixed(max(r, 1.0))), col, -1, cv2.LINE_8, SHIFT)
    elif kind == "ellipse":
        _, _, c, (rx, ry), angle = shape
        cv2.ellipse(canvas, tuple(_fixed(c)), (int(_fixed(rx)), int(_fixed(ry))), angle, 0, 360, col, -1,
                    cv2.LINE_8, SHIFT)
    elif kind == "polygon":
        cv2.fillPoly(canvas, [_fixed(shape[2])], col, cv2.LINE_8, SHIFT)
    elif kind == "rectangle":
        cv2.rectangle(canvas, tuple(_fixed(shape[2])), tuple(_fixed(shape[3])), col, -1, cv2.LINE_8, SHIFT)
    else:
        raise ValueError(f"unknown shape {kind!r}")


@dataclass
class Rendered:
    image: np.ndarray             # (H, W, 3) RGB uint8
    owner: np.ndarray             # (H, W) int: 1 + index of the figure a pixel shows, 0 elsewhere
    masks: list                   # per figure (H, W) bool: every pixel it drew (hidden ones included)


def render(scene: Scene, omit: int | None = None) -> Rendered:
    """Draw a scene; `omit` leaves figure number `omit` out (and nothing else changes)."""
    H, W = scene.height, scene.width
    (c0, c1, angle) = scene.gradient
    xs = (np.arange(W, dtype=np.float32) - W / 2) * math.cos(angle)
    ys = (np.arange(H, dtype=np.float32) - H / 2) * math.sin(angle)
    t = ((ys[:, None] + xs[None, :]) / (W + H) + 0.5)[..., None]          # (H, W, 1) in 0..1
    image = (np.float32(c0) * (1 - t) + np.float32(c1) * t).astype(np.uint8)
    for shape in scene.background:
        _draw(image, shape)
    owner = np.zeros((H, W), np.int32)
    masks = []
    for i, fig in enumerate(scene.figures):
        mask = np.zeros((H, W), np.uint8)
        for shape in fig.shapes:
            _draw(mask, shape, 255)
            if i != omit:
                _draw(image, shape)
        masks.append(mask > 0)
        if i != omit:
            owner[mask > 0] = i + 1
    for shape in scene.occluders:
        mask = np.zeros((H, W), np.uint8)
        _draw(mask, shape, 255)
        _draw(image, shape)
        owner[mask > 0] = 0
    if scene.blur:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    noise = np.random.default_rng(scene.noise_seed).standard_normal(image.shape, dtype=np.float32)
    image = np.clip(image + noise * np.float32(scene.noise_sigma), 0, 255).round().astype(np.uint8)
    return Rendered(image, owner, masks)


def label(scene: Scene, drawn: Rendered) -> list[dict]:
    """The COCO person annotations of a drawn scene (no ids yet), one per figure with pixels in view."""
    H, W = scene.height, scene.width
    out = []
    for i, fig in enumerate(scene.figures):
        mask = drawn.masks[i]
        if not mask.any():
            continue
        kps = []
        for x, y in fig.joints:
            px, py = int(round(x)), int(round(y))
            if not (0 <= px < W and 0 <= py < H):
                kps += [0, 0, 0]
            else:
                kps += [round(float(x), 2), round(float(y), 2), 2 if drawn.owner[py, px] == i + 1 else 1]
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
        out.append({"keypoints": kps, "num_keypoints": sum(v > 0 for v in kps[2::3]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0, "category_id": COCO.person_category})
    return out


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image `index` of a dataset: each image depends on (seed, index) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def encode(image: np.ndarray, fmt: str) -> bytes:
    """RGB uint8 -> JPEG (quality 90, baseline) or PNG bytes; the same bytes for the same pixels."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = ([cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY, cv2.IMWRITE_JPEG_OPTIMIZE, 0] if fmt == "jpg"
              else [cv2.IMWRITE_PNG_COMPRESSION, 6])
    ok, data = cv2.imencode("." + fmt, bgr, params)
    if not ok:
        raise SynthError(f"OpenCV could not encode a {fmt} image")
    return data.tobytes()


# --- the dataset ----------------------------------------------------------------------------

@dataclass
class SynthSummary:
    out: str
    images: int
    persons: int
    visible: int                  # joints with v = 2
    occluded: int                 # v = 1
    outside: int                  # v = 0
    seconds: float


def check_options(images: int, seed: int, size: tuple[int, int], persons: tuple[int, int], fmt: str) -> None:
    if not (isinstance(images, int) and images >= 1):
        raise SynthError(f"--images must be a positive number of images, not {images}")
    if not (isinstance(seed, int) and seed >= 0):
        raise SynthError(f"--seed must be a non-negative integer, not {seed}")
    width, height = size
    if not (32 <= width <= MAX_SIDE and 32 <= height <= MAX_SIDE):
        raise SynthError(f"--size {width}x{height}: each side must be 32..{MAX_SIDE} pixels")
    lo, hi = persons
    if not 1 <= lo <= hi <= MAX_PERSONS:
        raise SynthError(f"--persons {lo}-{hi}: need 1 <= MIN <= MAX <= {MAX_PERSONS}")
    if fmt not in ("jpg", "png"):
        raise SynthError(f"--format {fmt}: jpg or png")


def _prepare_out(out: Path, force: bool) -> Path:
    """The folder to write: `out`, or, when `out` is a symbolic link to a folder, that folder (the
    link stays as it is). SynthError unless it is absent, empty, or `force` is given."""
    absolute_path(out)                        # a relative path needs a current directory
    if os.path.lexists(out):
        problem = path_problem(out, folder=True)
        if problem == "not a folder":
            raise SynthError(f"{out}: exists and is not a folder")
        if problem:
            raise SynthError(f"{out}: {problem}")
        out = Path(os.path.realpath(out))
        if any(out.iterdir()) and not force:
            raise SynthError(f"{out}: folder exists and is not empty (--force replaces it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SynthError(f"{out.parent}: cannot create the folder: {e.strerror or e}") from None
    return out


def synthesize(out: "str | os.PathLike", images: int, seed: int, *, size: tuple[int, int] = DEFAULT_SIZE,
               persons: tuple[int, int] = DEFAULT_PERSONS, fmt: str = "jpg", force: bool = False,
               progress: bool = True) -> SynthSummary:
    """Write a synthetic COCO person-keypoints dataset to `out` (annotations.json, images/).

    The folder appears whole or not at all: everything is written into a temporary folder
    beside `out` and renamed into place at the end. An existing non-empty `out` is an error
    unless `force`, which replaces it.
    """
    from tqdm import tqdm

    check_options(images, seed, size, persons, fmt)
    given = Path(out)
    out = _prepare_out(given, force)
    start = time.perf_counter()
    width, height = size
    sweep_temporaries(out.parent)
    tmp = temporary_path(out)
    counts = np.zeros(3, np.int64)
    held = []
    try:
        (tmp / IMAGE_DIR).mkdir(parents=True)
        held.append(hold(tmp))
        entries, annotations = [], []
        for index in tqdm(range(images), desc="synth", unit="img", disable=not progress):
            scene = sample_scene(image_rng(seed, index), width, height, persons)
            drawn = render(scene)
            name = f"{index + 1:06d}.{fmt}"          # the numeric stem is the image id, as in COCO
            (tmp / IMAGE_DIR / name).write_bytes(encode(drawn.image, fmt))
            entries.append({"id": index + 1, "file_name": name, "width": width, "height": height})
            for a in label(scene, drawn):
                a.update(id=len(annotations) + 1, image_id=index + 1)
                counts += np.bincount(a["keypoints"][2::3], minlength=3)
                annotations.append(a)
        dataset = {
            "info": {"description": f"refpose synthetic person keypoints (seed {seed}); "
                     "for smoke tests only, no substitute for COCO", "version": "1"},
            "images": entries, "annotations": annotations,
            "categories": [{"id": COCO.person_category, "name": "person", "supercategory": "person",
                            "keypoints": list(COCO.names),
                            "skeleton": [[a + 1, b + 1] for a, b in COCO.skeleton]}],   # 1-based, as COCO
        }
        (tmp / ANN_NAME).write_text(json.dumps(dataset, sort_keys=True, separators=(",", ":")) + "\n")
        if out.exists():
            old = temporary_path(out, "old")
            held.append(hold(out))                  # the lock moves with the folder to its second name
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        for fd in held:
            release(fd)
    return SynthSummary(str(given), images, len(annotations), int(counts[2]), int(counts[1]), int(counts[0]),
                        time.perf_counter() - start)
