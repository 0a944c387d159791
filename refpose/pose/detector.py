"""Person boxes from an object detector exported to ONNX, for the top-down pipeline.

Two kinds of export are recognised from the model's outputs, the ones people download:

- **YOLOX as its authors export it** (`tools/export_onnx.py`; the ONNX files of the YOLOX
  releases): one output (1, N, 5 + classes), the raw head on the stride-8, 16 and 32 grids
  (N = sum of (H/s)(W/s); 3549 for 416x416, 8400 for 640x640). Per cell: x, y offsets and
  log w, h (before the grid), then objectness and class probabilities (already sigmoids).
  Decoded as YOLOX's `demo_postprocess`: centre = (offset + cell) * stride, size = exp(.) *
  stride; a person's score = objectness x probability of class 0; then NMS at IoU 0.45 (the
  `nms_thr` of YOLOX's ONNX Runtime demo) among persons.
  Input: the image letterboxed into the network size (scaled by r = min(H/h, W/w), placed
  top-left, padded with grey 114), BGR, 0..255, not normalised (YOLOX `preproc`, >= 0.2).
- **MMDeploy end2end exports** of MMDetection models (deploy configs `detection_onnxruntime_*`):
  outputs `dets` (1, N, 5) as x1, y1, x2, y2, score in input pixels and `labels` (1, N), NMS
  already in the graph (MMDeploy's `post_processing`: IoU 0.5, score >= 0.05, at most 100).
  Input: letterboxed as above (MMDetection `Resize(keep_ratio=True)` + `Pad`), then normalised
  as the export's own deploy pipeline says: MMDeploy writes it as `pipeline.json` beside
  `end2end.onnx` (its SDK files), and its `Normalize` (mean, std, to_rgb) and `Pad` value are
  used when that file is there; no `Normalize` there means raw 0..255 (MMDetection's YOLOX).
  Without the file: BGR with RTMDet's `data_preprocessor` statistics, mean (103.53, 116.28,
  123.675) and std (57.375, 57.12, 58.395) in B, G, R order, pad 114.

Class 0 is the person in both (the COCO order, and the only class of person-only models).
The network size is read from the ONNX file's input shape; a dynamic one is taken as 640x640.
The model runs on ONNX Runtime when it is installed (the `onnx` extra), otherwise on
OpenCV's `cv2.dnn`; both see the same file and the same preprocessed tensor.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import RefposeError
from ..fileio import brief, is_number, path_problem

PERSON = 0                            # class index of a person in the detector's outputs
YOLOX_STRIDES = (8, 16, 32)
YOLOX_NMS_IOU = 0.45                  # YOLOX demo/ONNXRuntime/onnx_inference.py, nms_thr
PAD_VALUE = 114                       # letterbox grey of YOLOX `preproc` and MMDetection `Pad`
RTMDET_MEAN = (103.53, 116.28, 123.675)   # B, G, R (MMDetection RTMDet configs, bgr_to_rgb=False)
RTMDET_STD = (57.375, 57.12, 58.395)
DEFAULT_INPUT = (640, 640)            # network size (H, W) when the file leaves it dynamic
RUNTIMES = ("onnxruntime", "opencv")
# the largest network input taken: detectors run at 416..1536 pixels a side; 4096x4096 as float32
# is a 200 MB tensor, and a file that declares 100000x100000 would ask for 120 GB
MAX_INPUT_SIDE = 4096
MAX_INPUT_PIXELS = MAX_INPUT_SIDE * MAX_INPUT_SIDE
MAX_FILE_BYTES = 2 ** 31               # protobuf's own limit on a serialised model


class DetectorError(RefposeError):
    """A detector file that is missing, unreadable, or whose outputs are not a recognised export."""


def default_runtime() -> str:
    """'onnxruntime' when it is installed, else 'opencv' (cv2.dnn)."""
    import importlib.util

    return "onnxruntime" if importlib.util.find_spec("onnxruntime") is not None else "opencv"


# --- reading the file's signature (no onnx package needed) -------------------------------------------
def _varint(buf, i: int) -> tuple[int, int]:
    """A base-128 varint at buf[i] (at most 10 bytes: 64 bits) and the index after it."""
    value = 0
    for shift in range(0, 70, 7):
        b = buf[i]                                          # IndexError when the message ends inside it
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
    raise ValueError("varint longer than 10 bytes")


def _fields(buf):
    """(field number, value) of each field of a protobuf message: an int for varints, a
    memoryview for everything else (protobuf wire format, developers.google.com/protocol-buffers).
    A length that runs past the end of the message is a ValueError, before anything is sliced."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire in (1, 2, 5):
            size, i = _varint(buf, i) if wire == 2 else ({1: 8, 5: 4}[wire], i)
            if size > n - i:
                raise ValueError("truncated message")
            value, i = buf[i:i + size], i + size
        else:
            raise ValueError(f"protobuf wire type {wire}")
        yield field, value


def _messages(buf, number: int):
    """The length-delimited values (sub-messages, strings) of field `number` of a message; a field
    of that number with another wire type is a ValueError (the file is not what it claims)."""
    for f, v in _fields(buf):
        if f == number:
            if isinstance(v, int):
                raise ValueError(f"field {number} is a number, expected a message")
            yield v


def _value_info(buf) -> tuple[str, tuple]:
    """ValueInfoProto -> (name, dims); a dim is an int, or None when symbolic or absent."""
    name, dims = "", ()
    for v in _messages(buf, 1):
        name = bytes(v).decode("utf-8", "replace")
    for tv in _messages(buf, 2):                            # TypeProto
        for tt in _messages(tv, 1):                         # tensor_type
            for shape in _messages(tt, 2):                  # TensorShapeProto
                dims = tuple(_dim(dv) for dv in _messages(shape, 1))
    return name, dims


def _dim(buf):
    for f, v in _fields(buf):
        if f == 1 and isinstance(v, int):
            return v if v > 0 else None
    return None


def onnx_signature(data: bytes) -> tuple[list[tuple[str, tuple]], list[tuple[str, tuple]]]:
    """Graph inputs and outputs [(name, dims)] of a serialised ONNX ModelProto; ValueError or
    IndexError when the bytes are not one.

    ModelProto.graph is field 7; GraphProto.input 11, output 12, initializer 5 (TensorProto,
    name 8). Initializers listed among the inputs (IR version < 4) are left out.
    """
    buf = memoryview(data)
    graphs = list(_messages(buf, 7))
    if not graphs:
        raise ValueError("no graph")
    graph = graphs[-1]
    inputs = [_value_info(v) for v in _messages(graph, 11)]
    outputs = [_value_info(v) for v in _messages(graph, 12)]
    constants = {bytes(name).decode("utf-8", "replace") for t in _messages(graph, 5) for name in _messages(t, 8)}
    return [i for i in inputs if i[0] not in constants], outputs


# --- the two export formats -----------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network input after the letterbox: (x - mean) / std, channel order."""
    mean: tuple[float, float, float] | None = None      # None: raw 0..255
    std: tuple[float, float, float] | None = None
    rgb: bool = False                                    # False: BGR, the order OpenCV decodes in
    pad_value: float = PAD_VALUE


YOLOX_PREPROCESSING = Preprocessing()
RTMDET_PREPROCESSING = Preprocessing(RTMDET_MEAN, RTMDET_STD)


def mmdeploy_preprocessing(model_path: str) -> Preprocessing:
    """The preprocessing of an MMDeploy export: from `pipeline.json` beside the model when present
    (its `Normalize` and `Pad` transforms), else RTMDet's. Every value is checked when read: a
    mean and a std of 3 finite numbers each, std > 0, a finite pad value."""
    from ..fileio import read_json

    pipeline = os.path.join(os.path.dirname(os.path.abspath(model_path)), "pipeline.json")
    if not os.path.lexists(pipeline):
        return RTMDET_PREPROCESSING
    try:
        data = read_json(pipeline, "MMDeploy pipeline")
    except RefposeError as e:
        raise DetectorError(str(e)) from None

    def fail(problem: str):
        return DetectorError(f"{pipeline}: not an MMDeploy pipeline this reader understands: {problem}")

    try:
        tasks = data["pipeline"]["tasks"]
        transforms = [t for task in tasks for t in task.get("transforms", [])]
        normalize = next((t for t in transforms if t.get("type") == "Normalize"), None)
        pad = next((t for t in transforms if t.get("type") == "Pad" and "pad_val" in t), None)
    except (KeyError, TypeError, AttributeError) as e:
        raise fail(f"no list of tasks with transforms ({type(e).__name__}: {e})") from None
    pad_value = PAD_VALUE
    if pad is not None:
        v = pad["pad_val"]
        v = v.get("img", PAD_VALUE) if isinstance(v, dict) else v
        v = v[0] if isinstance(v, list) and v else v
        if not is_number(v):
            raise fail(f"Pad's pad_val must be a finite number, got {brief(pad['pad_val'])}")
        pad_value = float(v)
    if normalize is None:
        return Preprocessing(pad_value=pad_value)
    stats = {}
    for key in ("mean", "std"):
        v = normalize.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(is_number(x) for x in v)):
            raise fail(f"Normalize's {key} must be 3 finite numbers (one per channel), got {brief(v)}")
        stats[key] = tuple(float(x) for x in v)
    if min(stats["std"]) <= 0:
        raise fail(f"Normalize's std must be positive, got {brief(normalize['std'])}")
    return Preprocessing(stats["mean"], stats["std"], bool(normalize.get("to_rgb", False)), pad_value)


@dataclass(frozen=True)
class ExportFormat:
    """What a detector file is: its kind, input name and size (H, W), and output names in the order used."""
    kind: str                       # "yolox" or "mmdeploy"
    input_name: str
    input_size: tuple[int, int]
    outputs: tuple[str, ...]


def yolox_grid_cells(input_size: tuple[int, int], strides=YOLOX_STRIDES) -> int:
    H, W = input_size
    return sum((H // s) * (W // s) for s in strides)


def recognise(inputs, outputs, name: str = "detector") -> ExportFormat:
    """The export format of a graph with these inputs and outputs [(name, dims)], or DetectorError."""
    def shape(dims):
        return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"

    found = ", ".join(f"{n} {shape(d)}" for n, d in outputs) or "none"
    if len(inputs) != 1 or len(inputs[0][1]) != 4 or inputs[0][1][1] not in (3, None):
        given = ", ".join(f"{n} {shape(d)}" for n, d in inputs) or "none"
        raise DetectorError(f"{name}: expected one image input (1, 3, H, W), found {given}")
    input_name, (_, _, H, W) = inputs[0]
    size = (H, W) if H and W else DEFAULT_INPUT
    if size[0] * size[1] > MAX_INPUT_PIXELS:
        raise DetectorError(f"{name}: declares a {size[0]}x{size[1]} input, more than the {MAX_INPUT_PIXELS:,} pixels "
                            f"({MAX_INPUT_SIDE}x{MAX_INPUT_SIDE}) a person detector is run at here")
    by_name = dict(outputs)
    if "dets" in by_name and "labels" in by_name:
        dets, labels = by_name["dets"], by_name["labels"]
        if len(dets) == 3 and dets[2] in (5, None) and len(labels) == 2:
            return ExportFormat("mmdeploy", input_name, size, ("dets", "labels"))
    if len(outputs) == 1 and len(outputs[0][1]) == 3:
        _, n, c = outputs[0][1]
        if (c is None or c >= 6) and n in (None, yolox_grid_cells(size)):
            return ExportFormat("yolox", input_name, size, (outputs[0][0],))
    raise DetectorError(
        f"{name}: unrecognised detector outputs {found} for a {size[0]}x{size[1]} input; expected YOLOX's raw "
        f"grid (1, {yolox_grid_cells(size)}, 5 + classes) or MMDeploy's end2end dets (1, N, 5) and labels (1, N)")


# --- preprocessing and decoding (pure functions of arrays) -------------------------------------------
def letterbox(image: np.ndarray, size: tuple[int, int], pad_value: float = PAD_VALUE) -> tuple[np.ndarray, float]:
    """Scale `image` (h, w, 3) by r = min(H/h, W/w) into the top-left of an (H, W, 3) grey canvas.

    YOLOX `preproc`: the scaled size is truncated, int(h r) x int(w r). Returns canvas and r;
    a point p of the canvas is p / r in the image.
    """
    H, W = size
    h, w = image.shape[:2]
    r = min(H / h, W / w)
    nh, nw = max(1, int(h * r)), max(1, int(w * r))
    canvas = np.full((H, W, 3), pad_value, dtype=np.uint8)
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, r


def yolox_decode(pred: np.ndarray, input_size: tuple[int, int], strides=YOLOX_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """YOLOX raw head output (N, 5 + C) -> boxes (N, 4) x1, y1, x2, y2 in input pixels, and
    class scores (N, C) = objectness x class probability (YOLOX `demo_postprocess`)."""
    H, W = input_size
    grids, cell_strides = [], []
    for s in strides:
        ys, xs = np.mgrid[0:H // s, 0:W // s]                     # row-major cells, as YOLOX flattens
        grids.append(np.stack([xs.ravel(), ys.ravel()], axis=1))  # (h*w, 2) as (x, y)
        cell_strides.append(np.full((xs.size, 1), s))
    grid = np.concatenate(grids).astype(np.float64)              # (N, 2)
    stride = np.concatenate(cell_strides).astype(np.float64)     # (N, 1)
    pred = np.asarray(pred, dtype=np.float64)
    if len(pred) != len(grid):
        raise DetectorError(f"YOLOX output has {len(pred)} cells, a {H}x{W} input has {len(grid)} "
                            f"on strides {', '.join(map(str, strides))}")
    centre = (pred[:, :2] + grid) * stride
    size = np.exp(pred[:, 2:4]) * stride
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)   # (N, 4)
    return boxes, pred[:, 4:5] * pred[:, 5:]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of boxes (N, 4) x1, y1, x2, y2 kept by greedy NMS at `iou`, highest score first (cv2.dnn.NMSBoxes)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=int)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, float(iou))   # scores are thresholded already
    keep = np.asarray(keep, dtype=int).reshape(-1)
    return keep[np.argsort(-scores[keep], kind="stable")]


def to_image_boxes(boxes: np.ndarray, ratio: float, image_size: tuple[int, int]) -> np.ndarray:
    """Boxes x1, y1, x2, y2 in network-input pixels -> COCO [x, y, w, h] in image pixels,
    clipped to the image (0..W, 0..H)."""
    H, W = image_size
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / ratio
    b = np.clip(b, 0.0, [W, H, W, H])
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


# --- runtimes ---------------------------------------------------------------------------------------
class _OrtRunner:
    def __init__(self, path: str, fmt: ExportFormat):
        from ..porting.runtimes import ort_session

        # threads that sleep between frames instead of spinning: the pose model runs in between
        self.session = ort_session(path)
        self.fmt = fmt

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(list(self.fmt.outputs), {self.fmt.input_name: x})


class _CvRunner:
    def __init__(self, path: str, fmt: ExportFormat):
        self.net = cv2.dnn.readNetFromONNX(path)
        if self.net.empty():
            raise cv2.error("the network is empty")
        self.fmt = fmt

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self.net.setInput(x)
        out = self.net.forward(list(self.fmt.outputs))
        return [np.asarray(o) for o in out]


class PersonDetector:
    """Person boxes of an RGB image from a YOLOX or MMDeploy ONNX export (see the module docstring).

    `detector(image)` -> (boxes (K, 4) COCO x, y, w, h in image pixels, scores (K,)), persons with
    score >= box_thr, highest score first. `kind`, `runtime` and `input_size` say what runs.
    """

    def __init__(self, path: "str | os.PathLike", box_thr: float = 0.3, runtime: str | None = None,
                 nms_iou: float = YOLOX_NMS_IOU):
        self.path = os.fspath(path)
        self.box_thr = float(box_thr)
        self.nms_iou = float(nms_iou)
        self.runtime = runtime or default_runtime()
        if self.runtime not in RUNTIMES:
            raise DetectorError(f"unknown detector runtime {self.runtime!r}; expected one of {', '.join(RUNTIMES)}")
        problem = path_problem(self.path, kind="an ONNX detector")
        if problem:
            raise DetectorError(f"{self.path}: {problem if problem != 'no such file' else 'no such detector file'}")
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise DetectorError(f"{self.path}: cannot read the detector: {e.strerror or e}") from None
        if len(data) > MAX_FILE_BYTES:
            raise DetectorError(f"{self.path}: larger than the {MAX_FILE_BYTES:,} bytes an ONNX model can hold")
        try:
            inputs, outputs = onnx_signature(data)
        except (ValueError, IndexError):
            raise DetectorError(f"{self.path}: not an ONNX model (cannot parse its graph)") from None
        self.format = recognise(inputs, outputs, self.path)
        self.preprocessing = (mmdeploy_preprocessing(self.path) if self.kind == "mmdeploy" else YOLOX_PREPROCESSING)
        try:
            self._run = (_OrtRunner if self.runtime == "onnxruntime" else _CvRunner)(self.path, self.format)
        except Exception as e:                          # each runtime has its own exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DetectorError(f"{self.path}: {self.runtime} cannot load the detector: {first}") from None

    @property
    def kind(self) -> str:
        return self.format.kind

    @property
    def input_size(self) -> tuple[int, int]:
        return self.format.input_size

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """RGB uint8 (h, w, 3) -> network input (1, 3, H, W) float32 and the letterbox ratio."""
        p = self.preprocessing
        canvas, ratio = letterbox(image if p.rgb else np.ascontiguousarray(image[..., ::-1]), self.input_size,
                                  p.pad_value)                                  # (H, W, 3)
        x = canvas.astype(np.float32)
        if p.mean is not None:
            x = (x - np.float32(p.mean)) / np.float32(p.std)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), ratio   # (1, 3, H, W)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, ratio = self.preprocess(image)
        try:
            out = self._run(x)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DetectorError(f"{self.path}: {self.runtime} failed to run the detector: {first}") from None
        boxes, scores = self.decode(out)
        boxes = to_image_boxes(boxes, ratio, image.shape[:2])
        ok = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)          # a box wholly in the padding has no area left
        return boxes[ok], scores[ok]

    def _check_finite(self, what: str, values: np.ndarray) -> None:
        bad = np.argwhere(~np.isfinite(values))
        if bad.size:
            raise DetectorError(f"{self.path}: the detector gave {values[tuple(bad[0])]} in its {what} at "
                                f"{tuple(int(i) for i in bad[0])}; boxes and scores must be finite numbers")

    def decode(self, out: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs -> person boxes (K, 4) x1, y1, x2, y2 in input pixels and scores (K,), score >= box_thr."""
        if self.kind == "yolox":
            pred = np.asarray(out[0], dtype=np.float64)
            if pred.ndim != 3 or pred.shape[0] != 1 or pred.shape[2] < 6:
                raise DetectorError(f"{self.path}: YOLOX output of shape {pred.shape}, expected (1, N, 5 + classes)")
            self._check_finite("YOLOX output", pred)
            with np.errstate(over="ignore"):            # exp of a huge log-size: an infinite box, clipped to the image
                boxes, class_scores = yolox_decode(pred[0], self.input_size)
            scores = class_scores[:, PERSON]
            ok = scores >= self.box_thr
            boxes, scores = boxes[ok], scores[ok]
            keep = nms(boxes, scores, self.nms_iou)
            return boxes[keep], scores[keep]
        dets, labels = np.asarray(out[0], dtype=np.float64), np.asarray(out[1])
        if dets.ndim != 3 or dets.shape[2] != 5 or labels.shape != dets.shape[:2]:
            raise DetectorError(f"{self.path}: MMDeploy outputs dets {dets.shape} and labels {labels.shape}, "
                                "expected (1, N, 5) and (1, N)")
        dets, labels = dets[0], labels[0]
        self._check_finite("MMDeploy dets", dets)
        ok = (labels == PERSON) & (dets[:, 4] >= self.box_thr)
        dets = dets[ok]
        order = np.argsort(-dets[:, 4], kind="stable")
        return dets[order, :4], dets[order, 4]
