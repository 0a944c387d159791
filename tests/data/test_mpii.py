"""MPII PCKh (refpose/data/mpii.py) and `refpose eval --metric pckh`, against a PCKh written here
from the definition, on synthetic ground-truth files in the official .mat structure.

The independent version works joint by joint with plain Python on the joints' *names*, so
neither the .mat's row order nor refpose's joint order is shared with the code under test.
Figures are percentages of integer counts: the two sides agree to float rounding (1e-9).
"""
import dataclasses
import json
import math
import sys

import numpy as np
import pytest

scipy_io = pytest.importorskip("scipy.io", reason="reading the MPII .mat needs scipy (the mpii extra)")

from refpose import get_config  # noqa: E402
from refpose.data import mpii as P  # noqa: E402
from refpose.cli import main  # noqa: E402
from refpose.pose.crop import box_to_center_scale  # noqa: E402
from refpose.weights import init_weights, save_weights  # noqa: E402

# the official .mat order of the joints (MPII: 0 r ankle ... 15 l wrist)
OFFICIAL = ["rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor", "neck", "head",
            "rwri", "relb", "rsho", "lsho", "lelb", "lwri"]
KEYS = ["Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean", "Mean@0.1"]


def synthetic(n=40, seed=0, order=OFFICIAL):
    """Ground truth (.mat arrays, 1-based) and 0-based predictions with errors of 0 .. 1 head size."""
    rng = np.random.default_rng(seed)
    gt = {name: rng.uniform(50, 600, size=(n, 2)) for name in OFFICIAL}          # 1-based x, y
    missing = {name: rng.random(n) < 0.2 for name in OFFICIAL}                   # a fifth missing
    top_left = rng.uniform(0, 400, size=(n, 2))
    diag = rng.uniform(10, 120, size=n)                                          # varied head sizes
    angle = rng.uniform(0, np.pi / 2, size=n)
    bottom_right = top_left + diag[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    pred = {}
    for name in OFFICIAL:
        err = rng.uniform(0, 1.0, size=n) * 0.6 * diag                          # 0 .. 1 head size
        theta = rng.uniform(0, 2 * np.pi, size=n)
        p = gt[name] - 1 + err[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
        p[missing[name]] = rng.uniform(-1e3, 1e3, size=(int(missing[name].sum()), 2))   # garbage, not counted
        pred[name] = p
    mat = {
        "dataset_joints": np.array([order], dtype=object),
        "jnt_missing": np.stack([missing[name].astype(np.uint8) for name in order]),             # (16, N)
        "pos_gt_src": np.stack([gt[name].T for name in order]),                                  # (16, 2, N)
        "headboxes_src": np.stack([top_left.T, bottom_right.T]),                                 # (2, 2, N)
    }
    return mat, pred, gt, missing, diag


def independent_pckh(pred, gt, missing, diag, threshold):
    """PCKh from its definition: per joint, the share of visible instances within threshold x 0.6 x diagonal."""
    hits, count = {}, {}
    for name in OFFICIAL:
        hits[name] = count[name] = 0
        for i in range(len(diag)):
            if missing[name][i]:
                continue
            count[name] += 1
            dx = pred[name][i][0] + 1 - gt[name][i][0]                 # predictions are 0-based
            dy = pred[name][i][1] + 1 - gt[name][i][1]
            if math.hypot(dx, dy) / (0.6 * diag[i]) <= threshold:
                hits[name] += 1

    def pct(name):
        return 100.0 * hits[name] / count[name] if count[name] else None

    def pair(a, b):
        return None if pct(a) is None or pct(b) is None else (pct(a) + pct(b)) / 2

    in_mean = [n for n in OFFICIAL if n not in ("pelv", "thor")]
    # weighting each joint's PCKh by its visible count = all hits over all visible instances
    mean = 100.0 * sum(hits[n] for n in in_mean) / sum(count[n] for n in in_mean)
    return {"Head": pct("head"), "Shoulder": pair("lsho", "rsho"), "Elbow": pair("lelb", "relb"),
            "Wrist": pair("lwri", "rwri"), "Hip": pair("lhip", "rhip"), "Knee": pair("lkne", "rkne"),
            "Ankle": pair("lank", "rank"), "Mean": mean}


def expected(pred, gt, missing, diag):
    out = independent_pckh(pred, gt, missing, diag, 0.5)
    # MMPose and HRNet read Mean@0.1 from row 11 of np.arange(0, 0.51, 0.01): threshold 0.11
    out["Mean@0.1"] = independent_pckh(pred, gt, missing, diag, 0.11)["Mean"]
    return out


def as_records(pred, n):
    ours = P.MAT_JOINTS                      # the order refpose's predictions come in
    return [{"keypoints": [[float(pred[j][i][0]), float(pred[j][i][1]), 0.9] for j in ours]} for i in range(n)]


def write_files(tmp_path, mat, pred, n, flat=False):
    mat_path, ann_path, res_path = tmp_path / "gt.mat", tmp_path / "val.json", tmp_path / "preds.json"
    scipy_io.savemat(mat_path, mat)
    ann = [{"image": f"{i // 2:03d}.jpg", "center": [300.0, 300.0], "scale": 1.5,
            "joints": [[0, 0]] * 16, "joints_vis": [1] * 16} for i in range(n)]
    ann_path.write_text(json.dumps(ann))
    recs = as_records(pred, n)
    if flat:
        recs = [{"keypoints": [v for row in r["keypoints"] for v in row]} for r in recs]
    res_path.write_text(json.dumps(recs))
    return mat_path, ann_path, res_path


def assert_same(got, want):
    assert list(got) == KEYS
    for k in KEYS:
        if want[k] is None:
            assert got[k] is None, k
        else:
            assert got[k] == pytest.approx(want[k], abs=1e-9), k


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pckh_matches_the_definition(tmp_path, seed):
    mat, pred, gt, missing, diag = synthetic(seed=seed)
    mat_path, ann_path, res_path = write_files(tmp_path, mat, pred, len(diag))
    got = P.score_pckh(ann_path, mat_path, res_path)
    assert_same(got, expected(pred, gt, missing, diag))
    assert 0 < got["Mean@0.1"] < got["Mean"] < 100          # errors spread over 0 .. 1 head size


def test_joint_order_of_the_mat_is_read_by_name(tmp_path):
    shuffled = list(np.random.default_rng(5).permutation(OFFICIAL))
    mat, pred, gt, missing, diag = synthetic(seed=3, order=shuffled)
    mat_path, ann_path, res_path = write_files(tmp_path, mat, pred, len(diag), flat=True)
    assert_same(P.score_pckh(ann_path, mat_path, res_path), expected(pred, gt, missing, diag))


def test_a_joint_never_visible_has_no_figure(tmp_path):
    mat, pred, gt, missing, diag = synthetic(seed=4)
    row = OFFICIAL.index("lwri")
    mat["jnt_missing"][row] = 1
    missing["lwri"][:] = True
    mat_path, ann_path, res_path = write_files(tmp_path, mat, pred, len(diag))
    got = P.score_pckh(ann_path, mat_path, res_path)
    assert got["Wrist"] is None
    assert_same(got, expected(pred, gt, missing, diag))


def test_perfect_and_hopeless_predictions():
    mat, pred, gt, missing, diag = synthetic(seed=6)
    truth = P.MpiiGroundTruth(np.stack([gt[n] for n in P.MAT_JOINTS], axis=1),
                              ~np.stack([missing[n] for n in P.MAT_JOINTS], axis=1), 0.6 * diag, "synthetic")
    exact = truth.positions - 1                                   # 0-based copies of the ground truth
    assert all(v == 100.0 for v in P.pckh(exact, truth).values())
    assert all(v == 0.0 for v in P.pckh(exact + 1e4, truth).values())
    # the +1 matters: 1-based predictions are a pixel off along both axes, wrong for tiny heads
    tiny = dataclasses.replace(truth, head_sizes=np.full(len(diag), 2.0))     # threshold 1 px
    assert P.pckh(truth.positions, tiny)["Mean"] == 0.0 and P.pckh(exact, tiny)["Mean"] == 100.0


def test_cli_json_has_exactly_the_nine_keys(tmp_path, capsys):
    mat, pred, gt, missing, diag = synthetic(seed=7)
    mat_path, ann_path, res_path = write_files(tmp_path, mat, pred, len(diag))
    argv = ["eval", "--metric", "pckh", "--ann", str(ann_path), "--gt", str(mat_path), "--results", str(res_path)]
    assert main(argv + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert_same(d, expected(pred, gt, missing, diag))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Head  Shoulder  Elbow  Wrist    Hip   Knee  Ankle   Mean  Mean@0.1" in out
    assert f"{d['Mean']:.1f}" in out


@pytest.mark.parametrize("change, words", [
    (lambda mat, recs: recs.pop(), "records for the 40 entries"),
    (lambda mat, recs: mat.update(pos_gt_src=mat["pos_gt_src"][:, :, :39]), "jnt_missing must have shape (16, 39)"),
    (lambda mat, recs: mat.pop("headboxes_src"), "no headboxes_src"),
    (lambda mat, recs: mat.update(dataset_joints=np.array([OFFICIAL[:15] + ["nose"]], dtype=object)),
     "must name the 16 MPII joints"),
    (lambda mat, recs: recs[3].update(keypoints=[[0, 0, 1]] * 15), "record 3: keypoints must be 16 x [x, y, score]"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, change, words):
    mat, pred, gt, missing, diag = synthetic()
    recs = as_records(pred, len(diag))
    change(mat, recs)
    mat_path, ann_path, res_path = write_files(tmp_path, mat, pred, len(diag))
    res_path.write_text(json.dumps(recs))
    assert main(["eval", "--metric", "pckh", "--ann", str(ann_path), "--gt", str(mat_path),
                 "--results", str(res_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


def test_cli_needs_gt_and_refuses_coco_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--metric", "pckh", "--ann", "a.json", "--results", "r.json"])
    assert e.value.code == 2 and "needs --gt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["eval", "--metric", "pckh", "--ann", "a.json", "--gt", "g.mat", "--results", "r.json", "--workers", "2"])
    assert e.value.code == 2 and "--workers do not go with --metric pckh" in capsys.readouterr().err


def test_without_scipy_the_error_is_one_line(tmp_path, capsys, monkeypatch):
    mat, pred, gt, missing, diag = synthetic()
    mat_path, ann_path, res_path = write_files(tmp_path, mat, pred, len(diag))
    monkeypatch.setitem(sys.modules, "scipy.io", None)           # `from scipy.io import ...` now fails
    assert main(["eval", "--metric", "pckh", "--ann", str(ann_path), "--gt", str(mat_path),
                 "--results", str(res_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs scipy" in err and "refpose[mpii]" in err


def test_entry_box_gives_mmposes_crop():
    # MMPose TopDownMpiiDataset: centre (1-based) + (0, 15 s), scale s x 1.25, centre - 1; crop 200 x scale px
    entry = {"center": [301.0, 211.0], "scale": 2.0}
    center, scale = box_to_center_scale(P.entry_box(entry), aspect_ratio=1.0)
    np.testing.assert_allclose(center, [300.0, 240.0], rtol=0, atol=1e-9)      # 211 + 30 - 1
    np.testing.assert_allclose(scale, [500.0, 500.0], rtol=0, atol=1e-9)       # 2 x 1.25 x 200


@pytest.mark.slow
def test_images_run_scores_what_it_writes(tmp_path, capsys):
    import cv2

    # a tiny 16-joint model (the tiny config's widths, MPII's head and dataset), untrained
    cfg = dataclasses.replace(get_config("tiny"), name="tiny-mpii", num_keypoints=16, dataset="mpii")
    weights = tmp_path / "tiny-mpii.safetensors"
    save_weights(weights, init_weights(cfg, seed=1), cfg, trained=False)
    n = 5
    mat, _, gt, missing, diag = synthetic(n=n, seed=8)
    mat_path, ann_path, _ = write_files(tmp_path, mat, {k: np.zeros((n, 2)) for k in OFFICIAL}, n)
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(0, n, 2):
        cv2.imwrite(str(tmp_path / "images" / f"{i // 2:03d}.jpg"), rng.integers(0, 255, (640, 620, 3), np.uint8))
    out = tmp_path / "pred.json"
    assert main(["eval", "--metric", "pckh", "--ann", str(ann_path), "--gt", str(mat_path), "--images",
                 str(tmp_path / "images"), "--weights", str(weights), "--results-out", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    recs = json.loads(out.read_text())
    assert len(recs) == n and [r["image"] for r in recs] == [f"{i // 2:03d}.jpg" for i in range(n)]
    kp = np.array([r["keypoints"] for r in recs])                               # (n, 16, 3)
    assert kp.shape == (n, 16, 3) and (kp[..., 0] >= 0).all() and (kp[..., 0] <= 619).all()
    pred = {name: kp[:, j, :2] for j, name in enumerate(P.MAT_JOINTS)}
    assert_same(got, expected(pred, gt, missing, diag))


def test_a_coco_model_is_refused_for_mpii(tmp_path):
    mat, pred, gt, missing, diag = synthetic(n=2)
    mat_path, ann_path, _ = write_files(tmp_path, mat, pred, 2)
    (tmp_path / "images").mkdir()
    with pytest.raises(P.DataError, match="predicts 17 keypoints; MPII needs 16"):
        P.evaluate_pckh(ann_path, mat_path, tmp_path / "images", config="tiny", results_out=tmp_path / "p.json")
    assert not (tmp_path / "p.json").exists()


# --- a damaged or hostile .mat: one line, status 2 (issue 23, item 16) ------------------------------
def _cell(values):
    """A MATLAB cell array holding each value of a NumPy array (scipy writes object arrays as cells)."""
    cell = np.empty(values.shape, dtype=object)
    for index in np.ndindex(values.shape):
        cell[index] = values[index]
    return cell


@pytest.mark.parametrize("change, words", [
    (lambda mat: mat.update(pos_gt_src=_cell(mat["pos_gt_src"])), "pos_gt_src must be a numeric array, got a cell array"),
    (lambda mat: mat.update(jnt_missing=_cell(mat["jnt_missing"])), "jnt_missing must be a numeric array, got a cell array"),
    (lambda mat: mat.update(headboxes_src=_cell(mat["headboxes_src"])), "headboxes_src must be a numeric array"),
    (lambda mat: mat.update(jnt_missing=np.where(mat["jnt_missing"] == 1, np.nan, 0.0)),
     "jnt_missing must hold 0 (visible) or 1 (missing), found nan"),
    (lambda mat: mat.update(jnt_missing=mat["jnt_missing"] * 2), "jnt_missing must hold 0 (visible) or 1 (missing), found 2"),
])
def test_a_mat_with_cells_or_nan_is_one_line(tmp_path, capsys, change, words):
    """Was a ValueError traceback (cells), or "n/a" for every figure with exit 0 (NaN jnt_missing)."""
    mat, pred, gt, missing, diag = synthetic()
    change(mat)
    mat_path, ann_path, res_path = write_files(tmp_path, mat, pred, len(diag))
    assert main(["eval", "--metric", "pckh", "--ann", str(ann_path), "--gt", str(mat_path),
                 "--results", str(res_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and words in err, err


def test_a_named_pipe_as_the_mat_is_refused_not_waited_on(tmp_path):
    import os

    os.mkfifo(tmp_path / "gt.mat")
    with pytest.raises(P.DataError, match=r"gt.mat: a named pipe \(FIFO\), not a regular file"):
        P.load_ground_truth(tmp_path / "gt.mat")
