"""Property tests of the readers of untrusted input: any bytes or any JSON value gives a result or a
`RefposeError` subclass, never another exception.

- weights: any bytes as a file; any safetensors header (JSON) over any data; tiny weights whose
  metadata holds any config or `trained` value;
- images: any bytes; valid PNG, JPEG, BMP and WebP files with bytes of their header changed,
  removed or inserted, or cut short;
- configs: any JSON value, and the tiny config with one field (or a stage's) set to any JSON value;
- detections, COCO keypoint results and annotations, MPII annotations and predictions: any JSON
  value as the whole file, and a valid file with one field of one record set to any JSON value
  (or removed); what a reader accepts is then scored or used, which must not fail either.

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
