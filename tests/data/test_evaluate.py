"""`refpose eval --images` (refpose/data/evaluate.py): the run over annotated images, its person
boxes, resuming, workers, missing images, and the records against `estimate` image by image."""
import json
import os
import shutil

import numpy as np
import pytest

import refpose
from refpose.errors import DataError, WeightsError
from refpose.data.evaluate import PROGRESS_SUFFIX, ModelSpec, RunOptions, gt_person_boxes, read_progress
from refpose.data.evaluate import evaluate_images as _evaluate_images
from refpose.data.coco import STAT_NAMES, load_annotations
from refpose.fileio import LineLog
from refpose.pretrained import default_model



def evaluate_images(ann, images, results_out, *, boxes=None, weights=None, progress=False, **options):
    """`refpose.data.evaluate.evaluate_images` with the model and run options as keywords."""
    model = ModelSpec(None if weights is None else str(weights))
    return _evaluate_images(ann, images, results_out, boxes=boxes, model=model, options=RunOptions(**options),
                            progress=progress)


pycocotools = pytest.importorskip("pycocotools", reason="COCO evaluation needs pycocotools")
from coco_files import direct_pycocotools, make_gt, run_gt, write  # noqa: E402


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
    with LineLog(path) as log, pytest.raises(DataError, match="line 2 is damaged"):
        read_progress(log.lines, str(path), settings, gt)
    path.write_text(head + "\n" + json.dumps({"image_id": 102, "records": []}) + "\n{broken")
    with LineLog(path) as log:
        assert read_progress(log.lines, str(path), settings, gt) == {102: []}   # a cut-short last line: redone


@pytest.mark.parametrize("name", ["../outside.png", "sub/../../outside.png", "ABSOLUTE"])
def test_a_file_name_that_leaves_the_image_folder_is_refused_before_any_image(run_files, tmp_path, name):
    # an annotation file's names are relative to --images; one that leads out of it read (and
    # scored) a file the user never named
    import cv2

    cv2.imwrite(str(tmp_path / "outside.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "images").mkdir()
    gt = json.loads((run_files / "gt.json").read_text())
    gt["images"][0]["file_name"] = str(tmp_path / "outside.png") if name == "ABSOLUTE" else name
    write(tmp_path / "gt.json", gt)
    for img in gt["images"][1:]:
        shutil.copy(run_files / "images" / img["file_name"], tmp_path / "images")
    with pytest.raises(DataError, match="leads outside .*names must be relative to the image folder"):
        evaluate_images(tmp_path / "gt.json", tmp_path / "images", tmp_path / "res.json",
                        weights=run_files / "tiny.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["gt.json", "images", "outside.png"]


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
    from refpose.data import evaluate
    from refpose.pose import pipeline as topdown

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

@pytest.fixture(scope="module")
def fresh_run(run_files, tmp_path_factory):
    """One complete run in this process (workers 1), flip test on, ground-truth boxes."""
    out = tmp_path_factory.mktemp("fresh") / "res.json"
    run = evaluate_images(run_files / "gt.json", run_files / "images", weights=run_files / "tiny.safetensors",
                          results_out=out, progress=False)
    return run, json.loads(out.read_text())




# --- the progress file: nothing lost, nothing re-run on bad data (issue 23, items 1, 10, 22, 25) ------
def _progress_of(out):
    return out.parent / (out.name + PROGRESS_SUFFIX)


def test_a_torn_line_is_cut_before_the_next_run_appends(run_files, fresh_run, tmp_path):
    """A crash leaves a half-written last line without a newline; the next run glued its first
    new line onto it and the run after that called the file damaged (all finished work lost)."""
    out = tmp_path / "res.json"
    args = dict(weights=run_files / "tiny.safetensors", results_out=out, progress=False)
    evaluate_images(run_files / "gt.json", run_files / "images", limit=1, **args)
    progress = _progress_of(out)
    with open(progress, "a") as f:
        f.write('{"image_id": 103, "rec')                      # torn by a crash
    second = evaluate_images(run_files / "gt.json", run_files / "images", limit=2, **args)
    assert second.resumed == 1 and second.scored == [102, 103]
    lines = progress.read_text().split("\n")
    assert lines[-1] == "" and [json.loads(line)["image_id"] for line in lines[1:-1]] == [102, 103]
    third = evaluate_images(run_files / "gt.json", run_files / "images", **args)
    assert third.resumed == 2 and third.scored == [102, 103, 104]
    assert json.loads(out.read_text()) == fresh_run[1]
    assert not progress.exists()


def _good_line(image_id=102):
    kpts = [10.0, 20.0, 0.5] * 17
    return {"image_id": image_id, "records": [{"image_id": image_id, "category_id": 1, "keypoints": kpts,
                                               "score": 0.5}]}


def _damaged(change):
    line = _good_line()
    change(line)
    return json.dumps(line)


@pytest.mark.parametrize("line, problem", [
    ('{"image_id": 1e400, "records": []}', "image_id inf is not an image of"),
    ('{"image_id": "102", "records": []}', "image_id '102' is not an image of"),
    ('{"image_id": 7, "records": []}', "image_id 7 is not an image of"),
    ('{"image_id": 102.5, "records": []}', "image_id 102.5 is not an image of"),
    ('{"image_id": 102, "records": {}}', "records must be a list"),
    ('{"image_id": 102}', "expected an object with image_id and records"),
    ('[102, []]', "expected an object with image_id and records"),
    ('{"image_id": 102, "records": [], "x": 1}', "expected an object with image_id and records"),
    (_damaged(lambda e: e["records"][0]["keypoints"].__setitem__(4, float("nan"))),
     "record 0: keypoints[4] is not a finite number, got nan"),
    (_damaged(lambda e: e["records"][0]["keypoints"].pop()), "record 0: keypoints has 50 numbers"),
    (_damaged(lambda e: e["records"][0].update(score="high")), "record 0: needs a finite number 'score'"),
    (_damaged(lambda e: e["records"][0].update(image_id=103)), "a record of another image than 102"),
    (_damaged(lambda e: e["records"][0].update(category_id=9)), "record 0: category_id 9 is not a category"),
    ('{"image_id": 102, "records": [', "not JSON"),
])
def test_a_damaged_progress_line_is_refused_before_any_image_runs(run_files, tmp_path, monkeypatch, line, problem):
    """image_id 1e400 was an OverflowError, a NaN keypoint a ValueError after the images were run."""
    from refpose.data import evaluate

    out = tmp_path / "res.json"
    args = dict(weights=run_files / "tiny.safetensors", results_out=out, progress=False)
    evaluate_images(run_files / "gt.json", run_files / "images", limit=1, **args)
    progress = _progress_of(out)
    header = progress.read_text().splitlines()[0]
    progress.write_text(header + "\n" + json.dumps(_good_line()) + "\n" + line + "\n")
    before = progress.read_bytes(), out.read_bytes()
    monkeypatch.setattr(evaluate, "run_jobs", lambda *a, **k: pytest.fail("an image was run"))
    with pytest.raises(DataError) as e:
        evaluate_images(run_files / "gt.json", run_files / "images", **args)
    assert str(e.value).startswith(f"{progress}: line 3 is damaged (") and problem in str(e.value)
    assert str(e.value).endswith("); pass --restart to start over")
    assert (progress.read_bytes(), out.read_bytes()) == before              # nothing changed


def test_an_empty_or_torn_header_starts_over(run_files, fresh_run, tmp_path):
    """A kill before the first line of the progress file was whole leaves nothing to resume."""
    out = tmp_path / "res.json"
    for content in (b"", b'{"format": "refpose-eval-pro'):
        _progress_of(out).write_bytes(content)
        run = evaluate_images(run_files / "gt.json", run_files / "images", weights=run_files / "tiny.safetensors",
                              results_out=out, progress=False)
        assert run.resumed == 0 and json.loads(out.read_text()) == fresh_run[1]


def test_a_progress_file_deleted_during_the_run_loses_nothing(run_files, fresh_run, tmp_path, monkeypatch):
    """`rm RES.json.progress.jsonl` while the run goes on: the results were written, then
    FileNotFoundError (no figures, status 2)."""
    from refpose.data import evaluate

    out = tmp_path / "res.json"
    run_jobs = evaluate.run_jobs

    def deleting(*a, **k):
        for n, item in enumerate(run_jobs(*a, **k)):
            if n == 1:
                _progress_of(out).unlink()
            yield item
    monkeypatch.setattr(evaluate, "run_jobs", deleting)
    run = evaluate_images(run_files / "gt.json", run_files / "images", weights=run_files / "tiny.safetensors",
                          results_out=out, progress=False)
    assert run.stats == fresh_run[0].stats and json.loads(out.read_text()) == fresh_run[1]


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(run_files, tmp_path, capsys):
    """Two runs appended to one progress file, and the first to finish deleted it under the other."""
    from refpose.cli import main

    out = tmp_path / "res.json"
    with LineLog(_progress_of(out)):                      # the first run holds it
        status = main(["eval", "--ann", str(run_files / "gt.json"), "--images", str(run_files / "images"),
                       "--weights", str(run_files / "tiny.safetensors"), "--results-out", str(out)])
    assert status == 2 and not out.exists()
    assert capsys.readouterr().err == (f"refpose eval: error: {_progress_of(out)}: another `refpose eval` is writing "
                                       "this progress file (the same --results-out); let it finish, or give another "
                                       "--results-out\n")


def test_workers_are_capped_at_the_cores(run_files, fresh_run, tmp_path, monkeypatch, capsys):
    """`--workers 64` on a machine of fewer cores started 64 processes, each loading the model."""
    from refpose.cli import main
    from refpose.data import evaluate

    monkeypatch.setattr(evaluate, "available_cores", lambda: 1)
    out = tmp_path / "res.json"
    assert main(["eval", "--ann", str(run_files / "gt.json"), "--images", str(run_files / "images"),
                 "--weights", str(run_files / "tiny.safetensors"), "--results-out", str(out), "--workers", "64"]) == 0
    err = capsys.readouterr().err
    assert "refpose eval: warning: 64 workers asked for, 1 core here: running 1\n" in err
    assert json.loads(out.read_text()) == fresh_run[1]
