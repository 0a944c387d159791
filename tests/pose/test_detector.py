"""Tests of the ONNX person detector (refpose/detect.py) on small graphs built here.

Each graph ignores its image (its outputs are constants, joined to the input by `+ 0 * mean(x)`
so that every runtime keeps the input) and produces what a YOLOX or an MMDeploy export would
for persons placed by hand; the expected boxes are worked out below from the formats'
definitions, then the decoder must recover them in original-image pixels.
"""
import os

import numpy as np
import pytest

from refpose.pose.detector import PersonDetector, DetectorError, letterbox, onnx_signature, RTMDET_MEAN, RTMDET_STD

onnx = pytest.importorskip("onnx", reason="the test graphs are built with the onnx package")
pytestmark = pytest.mark.onnx

try:
    import onnxruntime  # noqa: F401
    HAVE_ORT = True
except ImportError:
    HAVE_ORT = False

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

NET = 64                                 # network input 64x64: 8x8 + 4x4 + 2x2 = 84 YOLOX cells
IMAGE_H, IMAGE_W = 96, 128               # letterbox ratio r = min(64/96, 64/128) = 0.5
TOL = 1e-4                               # float32 outputs of size ~100 px: ~1e-5 relative


def constant_graph(outputs: dict, input_name="images", input_shape=(1, 3, NET, NET), path=None):
    """An ONNX file whose outputs are the given float arrays (int64 arrays pass through unchanged)."""
    nodes = [helper.make_node("ReduceMean", [input_name], ["m"], keepdims=1),          # (1, 1, 1, 1)
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
             helper.make_node("Mul", ["m", "zero"], ["z4"]),
             helper.make_node("Constant", [], ["shape3"],
                              value=numpy_helper.from_array(np.array([1, 1, 1], np.int64))),
             helper.make_node("Reshape", ["z4", "shape3"], ["z3"])]                   # (1, 1, 1) zeros
    outs = []
    for name, value in outputs.items():
        value = np.asarray(value)
        if value.dtype == np.int64:
            nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value)))
            outs.append(helper.make_tensor_value_info(name, TensorProto.INT64, value.shape))
            continue
        nodes.append(helper.make_node("Constant", [], [name + "_c"],
                                      value=numpy_helper.from_array(value.astype(np.float32))))
        z = "z3" if value.ndim == 3 else name + "_z"
        if value.ndim != 3:
            nodes.append(helper.make_node("Constant", [], [name + "_s"],
                                          value=numpy_helper.from_array(np.ones(value.ndim, np.int64))))
            nodes.append(helper.make_node("Reshape", ["z4", name + "_s"], [z]))
        nodes.append(helper.make_node("Add", [name + "_c", z], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, value.shape))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
                              outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def yolox_output() -> np.ndarray:
    """(1, 84, 7): 2 classes (person, other). Rows: x, y offsets, log w, log h, objectness, p(person), p(other)."""
    pred = np.zeros((84, 7))
    pred[:, 2:4] = 0.0
    # person A, stride 8, cell (x=3, y=2) = row 2*8+3: centre ((3+.5)*8, (2+.5)*8) = (28, 20), w 8*2, h 8*3
    pred[19] = [0.5, 0.5, np.log(2), np.log(3), 0.9, 0.8, 0.1]           # score 0.72
    # a shifted copy from the next cell (x=4, offset 0): centre (32, 20), box (24, 8)-(40, 32); its IoU with A
    # is 12*24 / (2*16*24 - 12*24) = 0.6, score 0.625*0.8 = 0.5 -> removed by NMS at 0.45, kept at 0.7
    pred[20] = [0.0, 0.5, np.log(2), np.log(3), 0.625, 0.8, 0.1]
    # person B, stride 32, cell (x=1, y=0) = row 64+16+1: centre (48, 16), 32x32; score 0.75*0.8 = 0.6
    pred[81] = [0.5, 0.5, 0.0, 0.0, 0.75, 0.8, 0.0]
    # a confident non-person and a faint person (0.5*0.5 = 0.25 < 0.3), both dropped
    pred[40] = [0.5, 0.5, 0.0, 0.0, 0.95, 0.05, 0.95]
    pred[70] = [0.5, 0.5, 0.0, 0.0, 0.5, 0.5, 0.0]
    return pred[None]


# expected persons in image pixels: input box / r (r = 0.5) as COCO x, y, w, h
YOLOX_BOXES = np.array([[(28 - 8) * 2, (20 - 12) * 2, 16 * 2, 24 * 2],
                        [(48 - 16) * 2, (16 - 16) * 2, 32 * 2, 32 * 2]], dtype=float)
YOLOX_SCORES = np.array([0.72, 0.6])

MMDEPLOY_DETS = np.array([[[10, 8, 30, 40, 0.9], [0, 0, 64, 64, 0.95], [5, 5, 20, 20, 0.2],
                           [40, 4, 60, 30, 0.5]]])
MMDEPLOY_LABELS = np.array([[0, 2, 0, 0]], dtype=np.int64)
MMDEPLOY_BOXES = np.array([[20, 16, 40, 64], [80, 8, 40, 52]], dtype=float)   # persons >= 0.3, / r
MMDEPLOY_SCORES = np.array([0.9, 0.5])


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    d = tmp_path_factory.mktemp("det")
    return {
        "yolox": constant_graph({"output": yolox_output()}, path=d / "yolox.onnx"),
        "mmdeploy": constant_graph({"dets": MMDEPLOY_DETS, "labels": MMDEPLOY_LABELS}, input_name="input",
                                   path=d / "end2end.onnx"),
        "yolov8": constant_graph({"output0": np.zeros((1, 7, 84))}, path=d / "yolov8.onnx"),
    }


def image():
    return np.random.default_rng(0).integers(0, 256, (IMAGE_H, IMAGE_W, 3), dtype=np.uint8)


def runtimes():
    out = [pytest.param("onnxruntime", marks=pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime not installed"))]
    return out + ["opencv"]


def make(path, runtime, **kw):
    try:
        return PersonDetector(path, runtime=runtime, **kw)
    except DetectorError as e:
        if runtime == "opencv" and "cannot load" in str(e):
            pytest.skip(f"this OpenCV's cv2.dnn does not load the test graph: {e}")
        raise


@pytest.mark.parametrize("runtime", runtimes())
def test_yolox_grid_decoded_to_image_pixels(graphs, runtime):
    det = make(graphs["yolox"], runtime)
    assert det.kind == "yolox" and det.input_size == (NET, NET) and det.runtime == runtime
    boxes, scores = det(image())
    np.testing.assert_allclose(boxes, YOLOX_BOXES, atol=TOL)
    np.testing.assert_allclose(scores, YOLOX_SCORES, atol=TOL)


@pytest.mark.parametrize("runtime", runtimes())
def test_yolox_threshold_and_nms(graphs, runtime):
    # at 0.2 the faint person (0.25) appears; NMS at IoU 0.45 still removes the duplicate of A
    boxes, scores = make(graphs["yolox"], runtime, box_thr=0.2)(image())
    np.testing.assert_allclose(scores, [0.72, 0.6, 0.25], atol=TOL)
    # at IoU 0.7 the shifted copy of A (IoU 0.6) is kept
    boxes, scores = make(graphs["yolox"], runtime, nms_iou=0.7)(image())
    np.testing.assert_allclose(scores, [0.72, 0.6, 0.5], atol=TOL)
    np.testing.assert_allclose(boxes[2], [24 * 2, 8 * 2, 16 * 2, 24 * 2], atol=TOL)


@pytest.mark.parametrize("runtime", runtimes())
def test_mmdeploy_dets_labels(graphs, runtime):
    det = make(graphs["mmdeploy"], runtime)
    assert det.kind == "mmdeploy"
    boxes, scores = det(image())
    np.testing.assert_allclose(boxes, MMDEPLOY_BOXES, atol=TOL)
    np.testing.assert_allclose(scores, MMDEPLOY_SCORES, atol=TOL)


def test_unrecognised_outputs_name_what_was_found(graphs):
    with pytest.raises(DetectorError, match=r"output0 \(1, 7, 84\)"):
        PersonDetector(graphs["yolov8"])


def test_not_onnx_and_missing(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"\xff\xff\xff\xff not a model")
    with pytest.raises(DetectorError, match="not an ONNX model"):
        PersonDetector(bad)
    with pytest.raises(DetectorError, match="no such detector file"):
        PersonDetector(tmp_path / "missing.onnx")


def test_signature_reader_matches_onnx(graphs):
    for path in graphs.values():
        model = onnx.load(str(path))
        inputs, outputs = onnx_signature(path.read_bytes())

        def dims(v):
            return tuple(d.dim_value or None for d in v.type.tensor_type.shape.dim)
        assert inputs == [(v.name, dims(v)) for v in model.graph.input]
        assert outputs == [(v.name, dims(v)) for v in model.graph.output]


def test_letterbox_and_normalisation(graphs):
    rgb = np.zeros((IMAGE_H, IMAGE_W, 3), np.uint8)
    rgb[:] = (10, 20, 30)
    canvas, r = letterbox(rgb, (NET, NET))
    assert r == 0.5
    assert (canvas[:48, :64] == (10, 20, 30)).all() and (canvas[48:] == 114).all()
    det = PersonDetector(graphs["yolox"])
    x, _ = det.preprocess(rgb)                                  # YOLOX: BGR, 0..255
    assert x.shape == (1, 3, NET, NET) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0, :, 0, 0], [30, 20, 10])
    np.testing.assert_array_equal(x[0, :, 63, 0], [114, 114, 114])
    x, _ = PersonDetector(graphs["mmdeploy"]).preprocess(rgb)   # MMDeploy: BGR, (v - mean) / std
    expected = [(30 - RTMDET_MEAN[0]) / RTMDET_STD[0], (20 - RTMDET_MEAN[1]) / RTMDET_STD[1],
                (10 - RTMDET_MEAN[2]) / RTMDET_STD[2]]
    np.testing.assert_allclose(x[0, :, 0, 0], expected, rtol=1e-6)


def test_mmdeploy_pipeline_json_gives_the_preprocessing(graphs, tmp_path):
    """MMDeploy's SDK files put the deploy pipeline beside end2end.onnx; its Normalize and Pad are used."""
    import json
    import shutil

    rgb = np.zeros((IMAGE_H, IMAGE_W, 3), np.uint8)
    rgb[:] = (10, 20, 30)

    def preprocess_with(transforms):
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        shutil.copy(graphs["mmdeploy"], d / "end2end.onnx")
        (d / "pipeline.json").write_text(json.dumps({"pipeline": {"tasks": [
            {"type": "Task", "module": "Transform", "transforms": [{"type": "LoadImageFromFile"}, *transforms]},
            {"type": "Task", "module": "Net"}]}}))
        return PersonDetector(d / "end2end.onnx").preprocess(rgb)[0]

    x = preprocess_with([{"type": "Resize", "keep_ratio": True}, {"type": "Pad", "pad_val": {"img": [0, 0, 0]}},
                         {"type": "Normalize", "mean": [1, 2, 3], "std": [2, 2, 2], "to_rgb": True}])
    np.testing.assert_allclose(x[0, :, 0, 0], [(10 - 1) / 2, (20 - 2) / 2, (30 - 3) / 2])    # RGB order
    np.testing.assert_allclose(x[0, :, 63, 0], [(0 - 1) / 2, (0 - 2) / 2, (0 - 3) / 2])      # pad 0
    x = preprocess_with([{"type": "Pad", "pad_val": {"img": [114, 114, 114]}}])             # no Normalize: raw BGR
    np.testing.assert_array_equal(x[0, :, 0, 0], [30, 20, 10])
    with pytest.raises(DetectorError, match="pipeline.json"):
        preprocess_with([{"type": "Normalize", "mean": "oops"}])


@pytest.mark.slow
@pytest.mark.torch
def test_yolox_nano_shaped_network_on_both_runtimes(tmp_path):
    """A real convolutional graph of YOLOX-nano's shape (random weights, two persons planted in its
    objectness; refpose/porting/bench/video.py) exported as YOLOX does: both runtimes find the two persons,
    at the same places. Tolerance 0.05 px: float32 convolutions summed in different orders by two
    runtimes differ by ~1e-5 relative, and box sizes pass through exp()."""
    pytest.importorskip("torch", reason="the network is exported from PyTorch")
    if not HAVE_ORT:
        pytest.skip("onnxruntime not installed")
    from refpose.porting.bench.video import export_detector

    path = export_detector(tmp_path / "nano.onnx")
    frame = np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    ort_boxes, ort_scores = PersonDetector(path, runtime="onnxruntime")(frame)
    cv_boxes, cv_scores = make(path, "opencv")(frame)
    assert len(ort_boxes) == 2                                    # the two planted cells, nothing else
    np.testing.assert_allclose(ort_scores, 1.0, atol=1e-6)        # sigmoid(30) * sigmoid(30 + x)
    np.testing.assert_allclose(cv_boxes, ort_boxes, atol=0.05)
    np.testing.assert_allclose(cv_scores, ort_scores, atol=1e-6)
    # planted at stride-32 cells (row 6, columns 4 and 8): centres within a few cells of (c + 0.5) * 32 / r
    r = min(416 / 360, 416 / 640)
    centres = ort_boxes[:, :2] + ort_boxes[:, 2:] / 2
    assert np.all(np.abs(centres[:, 1] - 6.5 * 32 / r) < 3 * 32 / r)
    assert sorted(np.round((centres[:, 0] * r / 32 - 0.5) / 4)) == [1, 2]    # columns near 4 and 8


# --- bad detector files: one DetectorError line each (issue 23, item 7) ------------------------------
@pytest.mark.parametrize("data", [
    b"\x3a\x02\x58\x01",                                    # graph whose input field 11 is a number (was TypeError)
    b"\x3a\x0a\x5a\x08\x0a\xff\xff\xff\xff\xff\xff\x0f",    # an input name of ~2^48 bytes (was MemoryError)
    b"\x3a\x0c\x5a\x0a\x0a" + b"\xff" * 11 + b"\x01",      # a varint longer than 64 bits
    b"\x0a",                                                # a field key and nothing after it
])
def test_damaged_protobuf_is_one_detector_error(tmp_path, data):
    path = tmp_path / "det.onnx"
    path.write_bytes(data)
    with pytest.raises(DetectorError, match="det.onnx: not an ONNX model"):
        PersonDetector(path)


def test_a_huge_declared_input_is_refused_before_anything_is_allocated(tmp_path):
    """A file that declares 1x3x100000x100000 would have the letterbox allocate 28 GiB per image."""
    path = constant_graph({"dets": MMDEPLOY_DETS, "labels": MMDEPLOY_LABELS}, input_name="input",
                          input_shape=(1, 3, 100000, 100000), path=tmp_path / "end2end.onnx")
    with pytest.raises(DetectorError, match=r"declares a 100000x100000 input, more than the 16,777,216 pixels"):
        PersonDetector(path)


@pytest.mark.parametrize("runtime", runtimes())
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_detections_are_refused(tmp_path, runtime, value):
    dets = MMDEPLOY_DETS.copy()
    dets[0, 1, 4] = value                          # the score of one detection
    path = constant_graph({"dets": dets, "labels": MMDEPLOY_LABELS}, input_name="input", path=tmp_path / "e.onnx")
    with pytest.raises(DetectorError, match=r"e.onnx: the detector gave -?(inf|nan) in its MMDeploy dets at \(1, 4\)"):
        make(path, runtime)(image())
    pred = yolox_output()
    pred[0, 19, 2] = value                         # a log-width
    path = constant_graph({"output": pred}, path=tmp_path / "y.onnx")
    with pytest.raises(DetectorError, match=r"y.onnx: the detector gave -?(inf|nan) in its YOLOX output at \(0, 19, 2\)"):
        make(path, runtime)(image())


@pytest.mark.parametrize("normalize, problem", [
    ({"mean": [1, 2], "std": [1, 1, 1]}, "Normalize's mean must be 3 finite numbers"),
    ({"mean": [1, 2, 3], "std": [1, 0, 1]}, "Normalize's std must be positive"),
    ({"mean": [1, 2, 3], "std": [1, -1, 1]}, "Normalize's std must be positive"),
    ({"mean": [1, 2, "x"], "std": [1, 1, 1]}, "Normalize's mean must be 3 finite numbers"),
    ({"mean": [1, 2, 3]}, "Normalize's std must be 3 finite numbers"),
    ({"mean": [1e400, 2, 3], "std": [1, 1, 1]}, "Normalize's mean must be 3 finite numbers"),
])
def test_pipeline_json_values_are_checked_when_read(graphs, tmp_path, normalize, problem):
    import json
    import shutil

    shutil.copy(graphs["mmdeploy"], tmp_path / "end2end.onnx")
    text = json.dumps({"pipeline": {"tasks": [{"transforms": [{"type": "Normalize", **normalize}]}]}})
    (tmp_path / "pipeline.json").write_text(text.replace("Infinity", "1e400"))
    with pytest.raises(DetectorError, match=f"pipeline.json: not an MMDeploy pipeline this reader understands: {problem}"):
        PersonDetector(tmp_path / "end2end.onnx")


def test_a_named_pipe_is_refused_not_waited_on(graphs, tmp_path):
    """A FIFO as --detector, or as the pipeline.json beside it: opening it would block forever."""
    import os
    import shutil

    os.mkfifo(tmp_path / "fifo.onnx")
    with pytest.raises(DetectorError, match=r"fifo.onnx: a named pipe \(FIFO\), not a regular file"):
        PersonDetector(tmp_path / "fifo.onnx")
    shutil.copy(graphs["mmdeploy"], tmp_path / "end2end.onnx")
    os.mkfifo(tmp_path / "pipeline.json")
    with pytest.raises(DetectorError, match=r"pipeline.json: a named pipe \(FIFO\), not a regular file"):
        PersonDetector(tmp_path / "end2end.onnx")


def test_cli_a_detector_that_gives_inf_is_one_line_for_images_and_videos(tmp_path, capfd):
    """`refpose infer IMAGE --detector` and a video with it: one error line, status 2, no output
    (was "ValueError: Out of range float values" when the records were written)."""
    import cv2
    from refpose.cli import main

    dets = MMDEPLOY_DETS.copy()
    dets[0, 0, 4] = np.inf
    det = constant_graph({"dets": dets, "labels": MMDEPLOY_LABELS}, input_name="input", path=tmp_path / "e.onnx")
    cv2.imwrite(str(tmp_path / "a.png"), image())
    writer = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (IMAGE_W, IMAGE_H))
    for _ in range(3):
        writer.write(image())
    writer.release()
    for name in ("a.png", "v.avi"):
        out = tmp_path / ("out-" + name)
        status = main(["infer", str(tmp_path / name), "--config", "tiny", "--detector", str(det), "--out", str(out)])
        err = capfd.readouterr().err
        assert status == 2
        lines = [line for line in err.splitlines() if "warning" not in line]
        assert len(lines) == 1 and "the detector gave inf in its MMDeploy dets at (0, 4)" in lines[0], err
        assert not out.exists() or os.listdir(out) == []
