"""Property tests of the readers of untrusted input: any bytes or any JSON value gives a result or a
`RefposeError` subclass, never another exception.

- weights: any bytes as a file; any safetensors header (JSON) over any data; tiny weights whose
  metadata holds any config or `trained` value;
- images: any bytes; valid PNG, JPEG, BMP and WebP files with bytes of their header changed,
  removed or inserted, or cut short;
- configs: any JSON value, and the tiny config with one field (or a stage's) set to any JSON value;
- detections, COCO keypoint results and annotations, MPII annotations and predictions: any JSON
  value as the whole file, and a valid file with one field of one record set to any JSON value
  (or removed); what a reader accepts is then scored or used, which must not fail either;
- the evaluation's progress file: any header, then lines that are a valid entry with one field
  changed, any JSON value or any text; what is accepted is scored;
- person detector files: any bytes, and ModelProto-shaped messages (often with a signature the
  reader recognises, so that ONNX Runtime gets the file) with bytes changed, inserted or cut;
- the MPII ground-truth .mat: any bytes, and a valid file with up to two variables replaced by
  NaN, infinities, other shapes, cell arrays, strings or structs; what is accepted is scored.

Each test tries REFPOSE_FUZZ_EXAMPLES inputs (200 by default, for CI); set it higher for a long
run, e.g. `REFPOSE_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py --hypothesis-show-statistics`.
"""
import json
import os
import struct

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save

import refpose
from refpose.config import WGNetConfig
from refpose.errors import RefposeError
from refpose.pose.imageio import decode_image

FUZZ = settings(max_examples=int(os.environ.get("REFPOSE_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
# a small limit keeps every decode cheap: headers that declare more are refused before decoding,
# which is the path under test; the property does not depend on the limit
MAX_PIXELS = 256 * 256

TINY = refpose.get_config("tiny").to_dict()
TINY_JSON = json.loads(json.dumps(TINY))       # JSON types: lists, not tuples

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-10 ** 400, max_value=10 ** 400) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20)


def accepts_or_refuses(fn, *args, **kwargs):
    """Call fn; a RefposeError is a fine answer, any other exception fails the test."""
    try:
        return fn(*args, **kwargs)
    except RefposeError:
        return None


# --- configs -------------------------------------------------------------------------------------
@FUZZ
@given(json_values)
def test_config_from_any_json_value(value):
    accepts_or_refuses(refpose.get_config, value)


@st.composite
def tiny_with_one_field_changed(draw):
    d = json.loads(json.dumps(TINY_JSON))
    where = draw(st.sampled_from(["top"] + [f"{part}:{i}" for part in ("encoder", "decoder") for i in range(4 if part == "encoder" else 3)]))
    if where == "top":
        target = d
    else:
        part, i = where.split(":")
        target = d[part][int(i)]
    key = draw(st.sampled_from(sorted(target)) | st.text(max_size=8))
    if draw(st.booleans()) and key in target:
        del target[key]
    else:
        target[key] = draw(json_values | st.integers(-3, 300) | st.lists(st.integers(-3, 300), max_size=3))
    return d


@FUZZ
@given(tiny_with_one_field_changed())
def test_config_with_one_field_changed(d):
    cfg = accepts_or_refuses(WGNetConfig.from_dict, d)
    if cfg is not None:               # what is accepted can be built and counted
        accepts_or_refuses(refpose.WGNet, cfg, impl="reference")


# --- weights -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _write(folder, name, data):
    path = folder / name
    path.write_bytes(data)
    return path


@FUZZ
@given(data=st.binary(max_size=512), suffix=st.sampled_from([".safetensors", ".npz"]))
def test_weights_from_any_bytes(folder, data, suffix):
    path = _write(folder, "any" + suffix, data)
    accepts_or_refuses(refpose.load, path)
    accepts_or_refuses(refpose.load, path, config="tiny")


DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "C64", "XX"]
KEYS = sorted(refpose.init_weights("tiny"))
tensor_entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(DTYPES),
    "shape": st.lists(st.integers(-2, 2 ** 40) | st.integers(0, 8), max_size=4),
    "data_offsets": st.lists(st.integers(-1, 2 ** 40) | st.integers(0, 64), max_size=3),
})
metadata = st.dictionaries(st.sampled_from(["format", "config", "trained"]) | st.text(max_size=5),
                           st.text(max_size=30) | st.sampled_from(["true", "false", json.dumps(TINY_JSON)])
                           | json_values, max_size=4)


@FUZZ
@given(header=st.dictionaries(st.sampled_from(KEYS[:5]) | st.text(max_size=10), tensor_entries | json_values,
                              max_size=4),
       meta=st.none() | metadata, raw=st.none() | json_values, data=st.binary(max_size=128),
       length_delta=st.sampled_from([0, 0, 0, -1, 1, 2 ** 40]))
def test_weights_from_any_safetensors_header(folder, header, meta, raw, data, length_delta):
    obj = raw if raw is not None else dict(header, **({"__metadata__": meta} if meta is not None else {}))
    text = json.dumps(obj).encode()
    path = _write(folder, "header.safetensors", struct.pack("<Q", max(0, len(text) + length_delta)) + text + data)
    accepts_or_refuses(refpose.load, path)
    accepts_or_refuses(refpose.load, path, config="tiny")


@pytest.fixture(scope="module")
def tiny_weights():
    return {k: np.ascontiguousarray(v) for k, v in refpose.init_weights("tiny").items()}


@FUZZ
@given(config=json_values | tiny_with_one_field_changed().map(json.dumps) | st.text(max_size=40),
       trained=st.none() | st.text(max_size=8) | st.sampled_from(["true", "false"]))
def test_weights_metadata_with_any_config(folder, tiny_weights, config, trained):
    meta = {"format": "refpose-weights/1",
            "config": config if isinstance(config, str) else json.dumps(config)}
    if trained is not None:
        meta["trained"] = trained
    path = _write(folder, "meta.safetensors", save(tiny_weights, metadata=meta))
    model = accepts_or_refuses(refpose.load, path, impl="reference")
    if model is not None:
        assert model.trained in (True, False, None)


# --- images --------------------------------------------------------------------------------------
def _samples():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (24, 18, 3), dtype=np.uint8)
    out = [cv2.imencode(ext, a, params)[1].tobytes()
           for ext, params in ((".png", []), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
                               (".bmp", []), (".webp", []))]
    out.append(cv2.imencode(".png", a[:, :, 0])[1].tobytes())
    return out


SAMPLES = _samples()


@st.composite
def mutated_images(draw):
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, min(len(data), 64) - 1))     # the header: where sizes and markers live
        op = draw(st.sampled_from(["set", "set", "insert", "delete", "cut"]))
        if op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[i]
        else:
            del data[draw(st.integers(0, len(data))):]
        if not data:
            break
    return bytes(data)


@FUZZ
@given(st.binary(max_size=1024))
def test_image_from_any_bytes(data):
    image = accepts_or_refuses(decode_image, data, "x", max_pixels=MAX_PIXELS)
    if image is not None:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@FUZZ
@given(mutated_images())
def test_image_with_a_mutated_header(data):
    image = accepts_or_refuses(decode_image, data, "x", max_pixels=MAX_PIXELS)
    if image is not None:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[0] * image.shape[1] <= MAX_PIXELS


# --- detections, results, annotations (JSON records) ---------------------------------------------
from refpose.pose.boxes import load_detections  # noqa: E402
from refpose.data.mpii import load_entries as load_mpii_annotations, load_predictions  # noqa: E402
from refpose.data.coco import coco_eval, load_annotations, load_results  # noqa: E402

KPTS = [10, 12, 2] * 17
GT = {"images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 100},
                 {"id": 2, "file_name": "b/2.jpg", "width": 64, "height": 48}],
      "categories": [{"id": 1, "name": "person"}],
      "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "keypoints": KPTS, "num_keypoints": 17,
                       "area": 400.0, "bbox": [0, 0, 20, 20], "iscrowd": 0},
                      {"id": 6, "image_id": 2, "category_id": 1, "keypoints": [0] * 51, "num_keypoints": 0,
                       "area": 0, "bbox": [1, 1, 5, 5], "iscrowd": 1}]}
RESULTS = [{"image_id": 1, "category_id": 1, "keypoints": KPTS, "score": 0.9},
           {"file_name": "2.jpg", "keypoints": [3, 4, 0.5] * 17, "score": 0.1}]
DETECTIONS = [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 30, 40], "score": 0.9},
              {"file_name": "x.jpg", "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
MPII_ANN = [{"image": "a.jpg", "center": [50, 60], "scale": 1.5, "joints": [[0, 0]] * 16}]
MPII_PRED = [{"keypoints": [[1, 2, 0.5]] * 16}]


@st.composite
def one_field_changed(draw, records):
    """A copy of `records` (a list of objects, or an object of lists of objects) in which one
    field of one record is set to any JSON value, or removed."""
    d = json.loads(json.dumps(records))
    lists = [d] if isinstance(d, list) else [d[k] for k in sorted(d)]
    items = draw(st.sampled_from(lists))
    target = items[draw(st.integers(0, len(items) - 1))]
    key = draw(st.sampled_from(sorted(target)) | st.text(max_size=8))
    if draw(st.booleans()) and key in target:
        del target[key]
    else:
        target[key] = draw(json_values | st.lists(json_values, min_size=2, max_size=51))
    return d


def _json_file(folder, name, value):
    path = folder / name
    path.write_text(json.dumps(value))          # NaN and Infinity as Python writes them
    return path


@FUZZ
@given(json_values | one_field_changed(DETECTIONS))
def test_detections_from_any_json(folder, value):
    dets = accepts_or_refuses(load_detections, _json_file(folder, "dets.json", value), 0.3)
    for boxes, scores in (dets or {}).values():
        assert boxes.shape == (len(scores), 4) and np.isfinite(boxes).all() and np.isfinite(scores).all()


@FUZZ
@given(json_values | one_field_changed(GT))
def test_annotations_from_any_json(folder, value):
    gt = accepts_or_refuses(load_annotations, _json_file(folder, "gt.json", value))
    records = None if gt is None else accepts_or_refuses(load_results, RESULTS, gt)
    if records is not None:            # what is accepted, pycocotools scores
        coco_eval(gt, records)


@FUZZ
@given(json_values | one_field_changed(RESULTS))
def test_results_from_any_json(folder, value):
    gt = load_annotations(GT)
    records = accepts_or_refuses(load_results, _json_file(folder, "res.json", value), gt)
    if records is not None:
        stats = coco_eval(gt, records)
        assert all(v is None or 0 <= v <= 1 for v in stats.values())


@FUZZ
@given(json_values | one_field_changed(MPII_ANN), json_values | one_field_changed(MPII_PRED))
def test_mpii_files_from_any_json(folder, ann, pred):
    accepts_or_refuses(load_mpii_annotations, _json_file(folder, "mpii.json", ann))
    out = accepts_or_refuses(load_predictions, _json_file(folder, "pred.json", pred))
    assert out is None or np.isfinite(out).all()


# --- the evaluation's progress file ----------------------------------------------------------------
from refpose.data.evaluate import read_progress  # noqa: E402

PROGRESS_SETTINGS = {"annotations": None, "weights": "untrained, seed 0", "config": "tiny", "dtype": "float32",
                     "flip": True, "boxes": "ground truth"}
PROGRESS_HEADER = json.dumps({"format": "refpose-eval-progress/1", "settings": PROGRESS_SETTINGS})
PROGRESS_LINE = {"image_id": 1, "records": [{"image_id": 1, "category_id": 1, "keypoints": KPTS, "score": 0.9}]}


@st.composite
def progress_lines(draw):
    """A header (as written, or any JSON), then lines each a valid entry with one field changed,
    any JSON value, or any text (a torn or damaged line)."""
    header = draw(st.just(PROGRESS_HEADER) | json_values.map(json.dumps))
    body = draw(st.lists(one_field_changed([PROGRESS_LINE]).map(lambda d: json.dumps(d[0]))
                         | one_field_changed(PROGRESS_LINE["records"]).map(lambda r: json.dumps({"image_id": 1, "records": r}))
                         | json_values.map(json.dumps) | st.text(max_size=40).filter(lambda t: "\n" not in t),
                         max_size=4))
    return [header] + body


@FUZZ
@given(progress_lines())
def test_progress_file_from_any_lines(lines):
    gt = load_annotations(GT)
    done = accepts_or_refuses(read_progress, lines, "p.jsonl", PROGRESS_SETTINGS, gt)
    if done is not None:               # what is accepted is scored as the run would score it
        assert set(done) <= set(gt.images)
        records = [r for image_records in done.values() for r in image_records]
        coco_eval(gt, records, image_ids=sorted(done) or None)


# --- person detector files ---------------------------------------------------------------------------
from refpose.pose.detector import PersonDetector  # noqa: E402


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


# a ModelProto skeleton: graph (7) with inputs (11) and outputs (12), each a ValueInfoProto with a
# name (1) and a type (2) -> tensor_type (1) -> shape (2) -> dims (1) -> dim_value (1)
dims = (st.sampled_from([[1, 3, 64, 64], [1, 3, 100000, 100000], [1, 3, 0, 0], [1, 84, 7], [1, 100, 5], [1, 100]])
        | st.lists(st.integers(0, 2 ** 64 - 1) | st.sampled_from([1, 3, 5, 64, 640, 8400]), max_size=5))
names = st.sampled_from(["images", "input", "dets", "labels", "output"]) | st.text(max_size=6)


@st.composite
def value_info(draw):
    shape = b"".join(_field(1, _field(1, d)) for d in draw(dims))
    return _field(1, draw(names).encode()) + _field(2, _field(1, _field(2, shape)))


def _signature(name: str, shape: list) -> bytes:
    return _field(1, name.encode()) + _field(2, _field(1, _field(2, b"".join(_field(1, _field(1, d)) for d in shape))))


MMDEPLOY_SIGNATURE = (_field(11, _signature("input", [1, 3, 64, 64])) + _field(12, _signature("dets", [1, 100, 5]))
                      + _field(12, _signature("labels", [1, 100])))      # recognised: the runtime gets the file


@st.composite
def protobuf_ish(draw):
    """A ModelProto-shaped message (often one whose signature is recognised, so that the runtime
    loads it), then bytes changed, inserted or cut, and junk fields mixed in."""
    if draw(st.booleans()):
        graph = MMDEPLOY_SIGNATURE
    else:
        graph = b"".join(_field(11, draw(value_info())) for _ in range(draw(st.integers(0, 2))))
        graph += b"".join(_field(12, draw(value_info())) for _ in range(draw(st.integers(0, 3))))
    graph += draw(st.just(b"") | st.binary(max_size=8))
    data = bytearray(_field(1, 7) + _field(7, graph))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        op = draw(st.sampled_from(["set", "insert", "cut"]))
        if op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[draw(st.integers(0, len(data))):]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=256) | protobuf_ish())
def test_detector_from_any_bytes(folder, data):
    pytest.importorskip("onnxruntime", reason="a file that parses is handed to ONNX Runtime")
    detector = accepts_or_refuses(PersonDetector, _write(folder, "det.onnx", data))
    if detector is not None:           # what loads runs on an image, or refuses it in one error
        boxes, scores = accepts_or_refuses(detector, np.zeros((48, 64, 3), np.uint8)) or (np.zeros((0, 4)), [])
        assert np.isfinite(boxes).all()


# --- the MPII ground-truth .mat ----------------------------------------------------------------------
from refpose.data.mpii import MAT_KEYS, load_ground_truth  # noqa: E402

GOOD_MAT = {"dataset_joints": np.array([["rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor", "neck",
                                         "head", "rwri", "relb", "rsho", "lsho", "lelb", "lwri"]], dtype=object),
            "jnt_missing": np.zeros((16, 2), np.uint8),
            "pos_gt_src": np.arange(64, dtype=np.float64).reshape(16, 2, 2) + 10,
            "headboxes_src": np.array([[[0.0, 5.0], [0.0, 5.0]], [[20.0, 30.0], [20.0, 30.0]]])}

mat_values = (
    st.sampled_from([np.nan, np.inf, -1.0, 0.0, 1.0, 2.0, 1e300]).map(lambda v: np.full((16, 2), v))
    | st.sampled_from([(16, 2), (16, 2, 2), (2, 2, 2), (16,), (0,), (16, 2, 3), ()]).map(np.zeros)
    | st.sampled_from(list(GOOD_MAT)).map(lambda k: np.array([GOOD_MAT[k]], dtype=object))   # a cell around it
    | st.text(max_size=10).map(np.array)
    | st.lists(st.text(max_size=4), min_size=1, max_size=17).map(lambda v: np.array([v], dtype=object))
    | st.just(np.array([[{"a": 1}]], dtype=object))
)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(MAT_KEYS), mat_values | st.none(), max_size=2),
       raw=st.none() | st.binary(max_size=300))
def test_mpii_mat_from_any_content(folder, changes, raw):
    io = pytest.importorskip("scipy.io", reason="the MPII .mat is read with scipy")
    path = folder / "gt.mat"
    if raw is not None:
        path.write_bytes(raw)
    else:
        mat = {k: v for k, v in {**GOOD_MAT, **changes}.items() if v is not None}
        try:
            io.savemat(path, mat)
        except Exception:                  # a value scipy cannot write is no test of the reader
            return
    gt = accepts_or_refuses(load_ground_truth, path)
    if gt is not None:                     # what is accepted scores without a warning or an error
        assert gt.positions.shape == (gt.num_persons, 16, 2) and gt.visible.dtype == bool
        from refpose.data.mpii import pckh

        stats = pckh(np.where(gt.visible[..., None], gt.positions - 1, 0.0), gt)
        assert all(v is None or 0 <= v <= 100 for v in stats.values())
