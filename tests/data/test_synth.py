"""`refpose synth`: determinism, valid COCO files, labels that sit on what was drawn, bad input.

The label checks do not trust the renderer's own bookkeeping (its owner map): a scene is
drawn twice, with and without one figure, and the pixels decide. Drawing is without
anti-aliasing and the noise is seeded per scene, so a pixel the figure does not show is
bit-identical in both drawings, and one it shows differs (different colour drawn there).
Blur (3x3, on some scenes) would spread a figure's colour one pixel into its occluder, so
those checks turn it off.
"""
import dataclasses
import json
import os

import numpy as np
import pytest

from refpose.cli import main
from refpose.data.evaluate import load_annotations
from refpose.pose.imageio import read_image
from refpose.keypoints import COCO
from refpose.data.synth import SynthError, image_rng, label, render, sample_scene, synthesize

SIZE = (160, 120)
J = {name: i for i, name in enumerate(COCO.names)}


def make(out, images=6, seed=3, **kw):
    return synthesize(out, images, seed, size=SIZE, progress=False, **kw)


def files_of(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(folder) for f in names}


def scenes(seed, count, size=SIZE, persons=(2, 4)):
    """Scenes as the dataset draws them, blur off (see the module docstring)."""
    for i in range(count):
        yield dataclasses.replace(sample_scene(image_rng(seed, i), *size, persons), blur=False)


def labelled(scene, drawn):
    """(figure index, annotation) pairs: `label` leaves out figures with no pixel in view."""
    shown = [f for f, mask in enumerate(drawn.masks) if mask.any()]
    labels = label(scene, drawn)
    assert len(labels) == len(shown)
    return zip(shown, labels)


# --- determinism ------------------------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    make(tmp_path / "a")
    make(tmp_path / "b")
    make(tmp_path / "c", seed=4)
    a, b, c = (files_of(tmp_path / n) for n in "abc")
    assert len(a) == 7 and a == b                                   # annotations.json + 6 images
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)                             # every file differs


def test_an_image_depends_on_seed_and_index_only(tmp_path):
    make(tmp_path / "short", images=2)
    make(tmp_path / "long", images=6)
    short, long = files_of(tmp_path / "short"), files_of(tmp_path / "long")
    assert all(short[k] == long[k] for k in short if k.startswith("images"))


# --- valid COCO --------------------------------------------------------------------------------

def test_loads_in_pycocotools_and_in_refpose(tmp_path):
    pytest.importorskip("pycocotools", reason="the check reads the file with pycocotools")
    import contextlib
    import io

    from pycocotools.coco import COCO as PyCOCO

    make(tmp_path / "d")
    path = str(tmp_path / "d" / "annotations.json")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = PyCOCO(path)
    assert len(coco.getImgIds()) == 6 and len(coco.getAnnIds()) >= 6
    gt = load_annotations(path)
    (cat,) = gt.dataset["categories"]
    assert cat["id"] == 1 and cat["name"] == "person"
    assert cat["keypoints"] == list(COCO.names)
    assert sorted(map(tuple, cat["skeleton"])) == sorted((a + 1, b + 1) for a, b in COCO.skeleton)   # 1-based
    for img in gt.dataset["images"]:
        assert read_image(tmp_path / "d" / "images" / img["file_name"]).shape == (SIZE[1], SIZE[0], 3)
    for a in gt.dataset["annotations"]:
        v = np.array(a["keypoints"][2::3])
        assert a["num_keypoints"] == int((v > 0).sum()) and a["iscrowd"] == 0 and a["category_id"] == 1
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and a["area"] == w * h
        assert 0 <= x and 0 <= y and x + w <= SIZE[0] and y + h <= SIZE[1]   # clipped to the image


def test_png_files_hold_the_rendered_pixels(tmp_path):
    make(tmp_path / "p", images=2, fmt="png")
    for i in range(2):
        scene = sample_scene(image_rng(3, i), *SIZE, (1, 4))
        stored = read_image(tmp_path / "p" / "images" / f"{i + 1:06d}.png")
        np.testing.assert_array_equal(stored, render(scene).image)    # lossless: exact


# --- labels against pixels ----------------------------------------------------------------------

def test_visible_joints_show_their_figure_and_occluded_ones_do_not():
    counts = {1: 0, 2: 0}
    for scene in scenes(seed=11, count=25):
        full = render(scene)
        for f, a in labelled(scene, full):
            without = render(scene, omit=f).image
            for x, y, v in np.reshape(a["keypoints"], (17, 3)):
                if v == 0:
                    continue
                px, py = int(round(x)), int(round(y))
                changed = np.abs(full.image[py, px].astype(int) - without[py, px]).max()
                if v == 2:
                    assert changed > 0, "a visible joint on a pixel its figure does not show"
                else:
                    assert changed == 0, "an occluded joint on a pixel its figure shows"
                counts[v] += 1
    assert counts[1] >= 20 and counts[2] >= 500            # both cases really tested


def test_joints_outside_the_image_are_zero_and_the_rest_inside_the_box():
    W, H = SIZE
    outside = 0
    for scene in scenes(seed=12, count=25):
        drawn = render(scene)
        for f, a in labelled(scene, drawn):
            fig = scene.figures[f]
            k = np.reshape(a["keypoints"], (17, 3))
            px, py = np.round(fig.joints).T
            out = (px < 0) | (px >= W) | (py < 0) | (py >= H)
            assert np.array_equal(k[:, 2] == 0, out)
            assert (k[out, :2] == 0).all()
            x, y, w, h = a["bbox"]
            inside = k[~out]
            # a joint's pixel is drawn by its figure, so it lies in the box of the drawn pixels
            assert ((inside[:, 0] >= x - 0.5) & (inside[:, 0] <= x + w - 0.5)).all()
            assert ((inside[:, 1] >= y - 0.5) & (inside[:, 1] <= y + h - 0.5)).all()
            outside += int(out.sum())
    assert outside >= 5


def test_left_side_is_lighter_than_the_right():
    """Flip must be learnable: compare the joint marks of the two sides where both show."""
    lighter = total = 0
    for scene in scenes(seed=13, count=25):
        full = render(scene)
        for _, a in labelled(scene, full):
            k = np.reshape(a["keypoints"], (17, 3))
            for joint in ("knee", "ankle", "elbow", "wrist"):
                (lx, ly, lv), (rx, ry, rv) = k[J[f"left_{joint}"]], k[J[f"right_{joint}"]]
                if lv == rv == 2:
                    left = full.image[int(round(ly)), int(round(lx))].astype(int).sum()
                    right = full.image[int(round(ry)), int(round(rx))].astype(int).sum()
                    lighter += left > right
                    total += 1
    # a joint's pixel can show another part of the same figure (a wrist over the other knee),
    # so not every pair compares its own marks: ask for a clear majority, not all
    assert total >= 100 and lighter >= 0.9 * total


def test_several_varied_figures():
    heights, per_image = [], []
    for scene in scenes(seed=14, count=40, persons=(1, 4)):
        per_image.append(len(scene.figures))
        heights += [np.ptp(f.joints[:, 1]) for f in scene.figures]
    assert set(per_image) == {1, 2, 3, 4}
    assert min(heights) < 0.25 * SIZE[1] and max(heights) > 0.6 * SIZE[1]


# --- output folder and bad input ----------------------------------------------------------------

def test_refuses_a_non_empty_folder_unless_forced(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    make(out, images=1)                                             # an empty folder is filled
    assert sorted(os.listdir(out)) == ["annotations.json", "images"]
    (out / "keep.txt").write_text("x")
    with pytest.raises(SynthError, match="not empty"):
        make(out)
    assert (out / "keep.txt").exists()
    make(out, force=True)
    assert not (out / "keep.txt").exists() and (out / "annotations.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["d"]                    # no temporary folders left


def test_a_failure_leaves_nothing(tmp_path, monkeypatch):
    import refpose.data.synth as synth

    calls = []

    def failing(image, fmt):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return b"x"

    monkeypatch.setattr(synth, "encode", failing)
    with pytest.raises(OSError):
        make(tmp_path / "d")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    (["--images", "0"], "argument --images: expected a whole number >= 1"),
    (["--seed", "-1"], "argument --seed: expected a seed between 0 and"),
    (["--size", "10x10"], "each side must be 32"),
    (["--size", "big"], "is not WIDTHxHEIGHT"),
    (["--persons", "3-1"], "MIN <= MAX"),
    (["--persons", "a-b"], "is not MIN-MAX"),
])
def test_bad_arguments_are_one_line_and_status_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:        # argparse usage errors exit from inside
        status = main(["synth", str(tmp_path / "d"), "--quiet"] + args)
        raise SystemExit(status)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "d").exists()


def test_cli_existing_folder_and_summary(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["synth", str(out), "--images", "2", "--size", "96x64", "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["synth", str(out), "--images", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refpose synth: error:") and "--force" in err and err.count("\n") == 1
    (tmp_path / "f").write_text("x")
    assert main(["synth", str(tmp_path / "f"), "--quiet"]) == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_runs_on_it_end_to_end(tmp_path, capsys):
    """`refpose eval --images` on a synthetic set with untrained weights: it runs, and scores
    about nothing (seeded random weights cannot place 17 joints within OKS tolerance)."""
    pytest.importorskip("pycocotools", reason="COCO evaluation needs pycocotools")
    make(tmp_path / "d", images=2)
    assert main(["eval", "--ann", str(tmp_path / "d" / "annotations.json"), "--images", str(tmp_path / "d" / "images"),
                 "--config", "tiny", "--results-out", str(tmp_path / "res.json"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert 0 <= stats["AP"] < 0.1


def test_image_ids_are_the_numeric_file_stems_so_infer_records_score(tmp_path, capsys):
    """COCO names image 397133 `000000397133.jpg`; `refpose infer` keys its records by that stem."""
    import json

    out = tmp_path / "d"
    assert main(["synth", str(out), "--images", "3", "--size", "96x64", "--quiet"]) == 0
    d = json.loads((out / "annotations.json").read_text())
    assert [(img["id"], img["file_name"]) for img in d["images"]] == [(1, "000001.jpg"), (2, "000002.jpg"),
                                                                      (3, "000003.jpg")]
    assert main(["infer", str(out / "images"), "--config", "tiny", "--json", "--out", str(tmp_path / "poses")]) == 0
    records = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(r["image_id"] for r in records) == [1, 2, 3]
    (tmp_path / "res.json").write_text(json.dumps(records))
    assert main(["eval", "--ann", str(out / "annotations.json"), "--results", str(tmp_path / "res.json")]) == 0


def test_force_through_a_symbolic_link_writes_where_it_points(tmp_path, capsys):
    """`refpose synth link --force` with `link` a link to a folder: the dataset was written, then
    "Cannot call rmtree on a symbolic link" (status 2), and a stray .link.<hex>.old stayed."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "old.txt").write_text("x")
    os.symlink("real", tmp_path / "link")
    assert main(["synth", str(tmp_path / "link"), "--images", "1", "--force", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'link'}: 1 images")
    assert os.readlink(tmp_path / "link") == "real"                       # the link stays a link
    assert sorted(os.listdir(tmp_path / "real")) == ["annotations.json", "images"]
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]                # nothing stray
    os.symlink("nowhere", tmp_path / "broken")
    assert main(["synth", str(tmp_path / "broken"), "--images", "1", "--quiet"]) == 2
    assert capsys.readouterr().err == f"refpose synth: error: {tmp_path / 'broken'}: broken symbolic link (to nowhere)\n"
