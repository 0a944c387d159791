"""MPII PCKh: the benchmark's metric, as the MPII evaluation script, HRNet and MMPose compute it.

Followed: MMPose 0.x `TopDownMpiiDataset.evaluate` (adapted there from HRNet
`lib/dataset/mpii.py`, itself a port of the official MATLAB evaluation):

- the ground truth is the official validation .mat (`mpii_gt_val.mat` / `gt_valid.mat`):
  `dataset_joints` (16 names), `jnt_missing` (16, N), `pos_gt_src` (16, 2, N) and
  `headboxes_src` (2, 2, N), in MATLAB's 1-based pixel coordinates, so 0-based
  predictions get +1 before they are compared;
- a joint is correct when its distance to the ground truth is at most `threshold` x the head
  size, the head size being `SC_BIAS` (0.6) x the diagonal of the person's head box;
- only visible joints (not `jnt_missing`) count; PCKh of a joint is the percentage of its
  visible instances that are correct;
- "Head" is the head-top joint; Shoulder ... Ankle average the left and right joints;
- "Mean" is over the 14 joints other than pelvis and thorax (upper neck included), each
  weighted by its number of visible instances;
- "Mean@0.1" is the same mean at the low threshold, read as MMPose and HRNet read it: row 11
  of the thresholds `np.arange(0, 0.51, 0.01)`, i.e. 0.11 (so that the figures compare with
  theirs).

The person order of the .mat is the order of MMPose's `mpii_val.json` (one entry per person
with `image`, `center`, `scale`, `joints`, `joints_vis`); predictions come one per entry, in
that order. Reading the .mat needs scipy (the `mpii` extra).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from ..fileio import is_number, path_problem
from ..errors import DataError, RefposeError
from ..keypoints import MPII
from .coco import read_json

SC_BIAS = 0.6                                     # head size = 0.6 x head-box diagonal
THRESHOLD = 0.5                                   # PCKh@0.5
LOW_THRESHOLD = np.arange(0, 0.5 + 0.01, 0.01)[11]   # MMPose / HRNet `pckAll[11]`: 0.11
# the joint names of the official .mat, in refpose.keypoints.MPII's order
MAT_JOINTS = ("rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor", "neck", "head",
              "rwri", "relb", "rsho", "lsho", "lelb", "lwri")
MAT_KEYS = ("dataset_joints", "jnt_missing", "pos_gt_src", "headboxes_src")   # the .mat's variables read
COLUMNS = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean", "Mean@0.1")
# column -> the joints it averages (indices of refpose.keypoints.MPII)
_PARTS = {"Head": (9,), "Shoulder": (13, 12), "Elbow": (14, 11), "Wrist": (15, 10),
          "Hip": (3, 2), "Knee": (4, 1), "Ankle": (5, 0)}
_IN_MEAN = tuple(j for j in range(16) if MPII.names[j] not in ("pelvis", "thorax"))


class MissingDependency(RefposeError):
    """An optional dependency a command needs is not installed."""


@dataclass(frozen=True)
class MpiiGroundTruth:
    """The official validation .mat, joints in refpose.keypoints.MPII's order (1-based pixels)."""

    positions: np.ndarray      # (N, 16, 2) x, y
    visible: np.ndarray        # (N, 16) bool
    head_sizes: np.ndarray     # (N,) SC_BIAS x head-box diagonal
    source: str

    @property
    def num_persons(self) -> int:
        return len(self.positions)


def _loadmat(path: str) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise MissingDependency("reading the MPII .mat needs scipy: pip install 'refpose[mpii]'") from None
    try:
        return loadmat(path, variable_names=list(MAT_KEYS))       # the rest of the file is not read
    except FileNotFoundError:
        raise DataError(f"{path}: no such ground-truth file") from None
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise DataError(f"{path}: not a MATLAB .mat file scipy can read ({e})") from None
    except Exception as e:                # scipy's own read errors (MatReadError and friends)
        raise DataError(f"{path}: not a MATLAB .mat file scipy can read ({type(e).__name__}: {e})") from None


def load_ground_truth(path: "str | os.PathLike") -> MpiiGroundTruth:
    """Read and check the official MPII validation .mat (see the module docstring)."""
    path = str(path)
    problem = path_problem(path, kind="a .mat file")
    if problem:
        raise DataError(f"{path}: {problem if problem != 'no such file' else 'no such ground-truth file'}")
    d = _loadmat(path)
    missing = [k for k in MAT_KEYS if k not in d]
    if missing:
        raise DataError(f"{path}: not an MPII ground truth: no {', '.join(missing)}")
    try:
        names = [str(np.asarray(n).ravel()[0]) for n in np.asarray(d["dataset_joints"], dtype=object).ravel()]
    except (IndexError, TypeError):
        raise DataError(f"{path}: dataset_joints is not a list of joint names") from None
    absent = [n for n in MAT_JOINTS if n not in names]
    if len(names) != 16 or absent:
        raise DataError(f"{path}: dataset_joints must name the 16 MPII joints "
                        f"({', '.join(MAT_JOINTS)}); got {', '.join(names)}")
    order = [names.index(n) for n in MAT_JOINTS]              # .mat row of each of our joints
    jnt_missing, pos, boxes = (np.asarray(d[k]) for k in ("jnt_missing", "pos_gt_src", "headboxes_src"))
    for key, a in (("jnt_missing", jnt_missing), ("pos_gt_src", pos), ("headboxes_src", boxes)):
        if a.dtype.kind not in "biuf":              # a cell array (dtype object), strings, a struct
            what = "a cell array" if a.dtype.kind == "O" else f"an array of {a.dtype}"
            raise DataError(f"{path}: {key} must be a numeric array, got {what}")
    if pos.ndim != 3 or pos.shape[:2] != (16, 2):
        raise DataError(f"{path}: pos_gt_src must have shape (16, 2, N), got {pos.shape}")
    N = pos.shape[2]
    if jnt_missing.shape != (16, N):
        raise DataError(f"{path}: jnt_missing must have shape (16, {N}), got {jnt_missing.shape}")
    if boxes.shape != (2, 2, N):
        raise DataError(f"{path}: headboxes_src must have shape (2, 2, {N}), got {boxes.shape}")
    if not np.isin(jnt_missing, (0, 1)).all():
        bad = jnt_missing.ravel()[~np.isin(jnt_missing.ravel(), (0, 1))][0]
        raise DataError(f"{path}: jnt_missing must hold 0 (visible) or 1 (missing), found {bad}")
    visible = (1 - jnt_missing.astype(np.float64))[order].T == 1          # (N, 16)
    positions = pos.astype(np.float64)[order].transpose(2, 0, 1)          # (N, 16, 2)
    corners = boxes.astype(np.float64)                                    # (corner, xy, N)
    head_sizes = SC_BIAS * np.linalg.norm(corners[1] - corners[0], axis=0)   # (N,)
    bad = np.flatnonzero(visible.any(axis=1) & ~(np.isfinite(head_sizes) & (head_sizes > 0)))
    if bad.size:
        raise DataError(f"{path}: person {bad[0]} has visible joints but no head box (zero or not finite)")
    bad = np.argwhere(visible & ~np.isfinite(positions).all(axis=2))
    if bad.size:
        raise DataError(f"{path}: person {bad[0][0]}, joint {MAT_JOINTS[bad[0][1]]}: visible but not finite")
    return MpiiGroundTruth(positions, visible, head_sizes, path)


def pckh(pred: np.ndarray, gt: MpiiGroundTruth) -> dict:
    """Table 3's nine figures, in percent, of predictions (N, 16, 2) in 0-based image pixels.

    A joint column with no visible instance is None (MMPose would give NaN); it then has no
    weight in the means either.
    """
    pred = np.asarray(pred, dtype=np.float64)
    if pred.shape != gt.positions.shape:
        raise DataError(f"{pred.shape[0] if pred.ndim else 0} predictions of shape {pred.shape[1:]} for "
                        f"{gt.num_persons} persons of {gt.source} (expected {gt.positions.shape})")
    # 1-based, like the .mat; distance in head sizes
    with np.errstate(invalid="ignore", divide="ignore"):   # persons without visible joints may lack a head box
        scaled = np.linalg.norm(pred + 1.0 - gt.positions, axis=2) / gt.head_sizes[:, None]   # (N, 16)
    count = gt.visible.sum(axis=0)                                                         # (16,)

    def per_joint(threshold: float) -> np.ndarray:
        hits = ((scaled <= threshold) & gt.visible).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * hits / count                                                    # (16,), NaN if none

    at_half, at_low = per_joint(THRESHOLD), per_joint(LOW_THRESHOLD)
    weights = np.zeros(16)
    weights[list(_IN_MEAN)] = count[list(_IN_MEAN)]

    def mean(p: np.ndarray) -> float | None:
        if weights.sum() == 0:
            return None
        return float(np.sum(np.where(weights > 0, p, 0.0) * weights) / weights.sum())

    out = {}
    for col, joints in _PARTS.items():
        values = [at_half[j] for j in joints]
        out[col] = None if any(math.isnan(v) for v in values) else float(np.mean(values))
    out["Mean"] = mean(at_half)
    out["Mean@0.1"] = mean(at_low)
    return out


def format_pckh(stats: dict) -> str:
    """The nine figures as Table 3 prints them: percent, one decimal."""
    cells = ["n/a" if stats[k] is None else f"{stats[k]:.1f}" for k in COLUMNS]
    width = [max(len(k), 5) for k in COLUMNS]
    return ("  ".join(f"{k:>{w}}" for k, w in zip(COLUMNS, width)) + "\n"
            + "  ".join(f"{c:>{w}}" for c, w in zip(cells, width)))


# --- the files around the metric ----------------------------------------------------------
def load_entries(path: "str | os.PathLike") -> list[dict]:
    """MMPose's `mpii_val.json`: a list with one entry per person (`image`, `center`, `scale`;
    `joints` and `joints_vis` are not needed to score). Checked entry by entry."""
    path = str(path)
    ann = read_json(path, "MPII annotations")
    if not isinstance(ann, list):
        raise DataError(f"{path}: expected a JSON list of MPII person entries (image, center, scale), "
                        f"got a JSON {type(ann).__name__}")
    for i, a in enumerate(ann):
        where = f"{path}: entry {i}"
        if not isinstance(a, dict):
            raise DataError(f"{where}: expected an object with image, center, scale")
        if not isinstance(a.get("image"), str):
            raise DataError(f"{where}: needs an 'image' file name")
        c, s = a.get("center"), a.get("scale")
        if not (isinstance(c, list) and len(c) == 2 and all(is_number(v) for v in c)):
            raise DataError(f"{where}: center must be two numbers x, y, got {c!r}")
        if not (is_number(s) and s > 0):
            raise DataError(f"{where}: scale must be a positive number, got {s!r}")
    return ann


def load_predictions(path_or_records, num_joints: int = 16) -> np.ndarray:
    """Predictions, one record per annotation entry, each with `keypoints` = 16 x [x, y, score]
    (nested or flat) in 0-based image pixels -> (N, 16, 2)."""
    if isinstance(path_or_records, list):
        source, recs = "predictions", path_or_records
    else:
        source = str(path_or_records)
        recs = read_json(source, "predictions")
    if not isinstance(recs, list):
        raise DataError(f"{source}: expected a JSON list with one record per annotation entry, "
                        f"got a JSON {type(recs).__name__}")
    out = np.empty((len(recs), num_joints, 2))
    for i, r in enumerate(recs):
        k = r.get("keypoints") if isinstance(r, dict) else None
        flat = [v for row in k for v in (row if isinstance(row, list) else [row])] if isinstance(k, list) else None
        if flat is None or len(flat) != 3 * num_joints or not all(is_number(v) for v in flat):
            raise DataError(f"{source}: record {i}: keypoints must be {num_joints} x [x, y, score] finite numbers")
        out[i] = np.asarray(flat, dtype=np.float64).reshape(num_joints, 3)[:, :2]
    return out


def score_pckh(ann: "str | os.PathLike", gt: "str | os.PathLike", results) -> dict:
    """PCKh of a predictions file (or list of records) against the .mat; `ann` fixes the count."""
    entries = load_entries(ann)
    truth = load_ground_truth(gt)
    if len(entries) != truth.num_persons:
        raise DataError(f"{ann} has {len(entries)} persons but {gt} has {truth.num_persons}: "
                        "they must be the same validation set, in the same order")
    pred = load_predictions(results)
    if len(pred) != len(entries):
        raise DataError(f"{results if not isinstance(results, list) else 'predictions'}: {len(pred)} records "
                        f"for the {len(entries)} entries of {ann} (one per entry, in its order)")
    return pckh(pred, truth)


# --- running the model ----------------------------------------------------------------------
PIXEL_STD = 200.0          # MPII's scale is the person's height / 200 px
SCALE_PADDING = 1.25       # MMPose `TopDownMpiiDataset._get_db`: scale x 1.25 ...
CENTER_SHIFT = 15          # ... and the centre moved down by 15 x scale px, to keep the legs


def entry_box(entry: dict) -> list[float]:
    """The square box [x, y, w, h] (0-based pixels) whose top-down crop is MMPose's for an entry.

    MMPose: centre (1-based) moved down by 15 x scale, scale x 1.25, centre - 1; the crop is
    scale x 200 px wide. The pipeline pads a box by `refpose.pose.crop.PADDING`, so the box is that
    crop divided by the padding (for a square input the aspect-ratio fix changes nothing).
    """
    from ..pose.crop import PADDING

    cx, cy = (float(v) for v in entry["center"])
    s = float(entry["scale"])
    if cx != -1:
        cy += CENTER_SHIFT * s
        s *= SCALE_PADDING
    cx, cy = cx - 1, cy - 1
    side = s * PIXEL_STD / PADDING
    return [cx - side / 2, cy - side / 2, side, side]


def predict_entries(entries: list[dict], images, *, weights=None, config: str | None = None,
                    dtype: str = "float32", flip: bool = True, progress: bool | None = None) -> list[dict]:
    """Run the model on every entry of `mpii_val.json` (`load_entries`; its image in `images`, the
    box from its centre and scale) through the image driver: one record per entry, in order, with
    `image` and `keypoints` 16 x [x, y, score] in 0-based image pixels. A missing image stops the run."""
    from tqdm import tqdm

    from ..pose.driver import ImageInput, run_images
    from ..fileio import name_in_folder
    from ..pose.pipeline import PoseOptions
    from ..pretrained import default_model
    from .evaluate import check_image_folder

    images = str(images)
    check_image_folder(images)
    model = default_model(weights=weights, config=config if config is not None or weights is not None
                          else "wgnet-mpii", dtype=dtype)
    if model.config.num_keypoints != MPII.num_joints:
        raise DataError(f"config {model.config.name!r} predicts {model.config.num_keypoints} keypoints; "
                        f"MPII needs {MPII.num_joints} (use --config wgnet-mpii or MPII weights)")
    by_image: dict[str, list[int]] = {}
    for i, a in enumerate(entries):
        by_image.setdefault(a["image"], []).append(i)
    for name in by_image:
        problem = name_in_folder(images, name)[1]
        if problem:
            raise DataError(f"image {name!r}: {problem}")
    inputs = (ImageInput(path=name_in_folder(images, name)[0], boxes=np.array([entry_box(entries[i]) for i in idx]),
                         file_name=name) for name, idx in by_image.items())
    records: list = [None] * len(entries)
    with tqdm(total=len(entries), desc="pckh", unit="person", disable=None if progress is None else not progress) as bar:
        for (name, idx), result in zip(by_image.items(), run_images(inputs, model, PoseOptions(flip=flip))):
            if result.error is not None:
                raise result.error
            for i, p in zip(idx, result.poses):
                records[i] = {"image": name, "keypoints": np.asarray(p["keypoints"]).tolist()}
            bar.update(len(idx))
    return records


def evaluate_pckh(ann, gt, images, *, results_out: "str | os.PathLike" = "pred_mpii.json", **run) -> dict:
    """Predict every entry (`predict_entries`), write the records to `results_out`, score them."""
    from ..fileio import check_output_path, write_atomic

    check_output_path(results_out, [ann, gt, run.get("weights")])   # before the long run, not after it
    truth = load_ground_truth(gt)                    # fail on a bad .mat before the long run
    entries = load_entries(ann)
    if len(entries) != truth.num_persons:
        raise DataError(f"{ann} has {len(entries)} persons but {gt} has {truth.num_persons}: "
                        "they must be the same validation set, in the same order")
    records = predict_entries(entries, images, **run)
    write_atomic(results_out, json.dumps(records, allow_nan=False).encode())
    return pckh(load_predictions(records), truth)
