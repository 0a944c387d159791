"""Post-training static quantization (`refpose quantize`), as ONNX Runtime's `quantize_static` and
OpenVINO's POT/NNCF lay it out: weights int8 symmetric per output channel, on the BatchNorm-folded
weights an exported model has; activations uint8 per tensor, asymmetric (a zero point), their
ranges from calibration crops run through the float model.

Calibration: the crops are cut by the same pipeline as `refpose infer` (`pose.pipeline.crop_persons`,
boxes from DETS.json or the whole image) and run through the float network in float32 on the NumPy
reference ops (`refpose.quant.network.Float`), which reports every tensor the int8 network
quantizes. Ranges, per tensor, over all crops:

- minmax: the smallest and largest value;
- percentile: the 0.001 % and 99.999 % points of a 2048-bin histogram (ONNX Runtime's default
  percentile), so that a few outliers do not stretch the scale;
- entropy: the threshold t on |x| whose 128-bin quantization of the 2048-bin histogram of |x|
  loses the least information (Kullback-Leibler, as TensorRT and ONNX Runtime's entropy method),
  then [max(min, -t), min(max, t)].

Each range is widened to hold 0 and turned into (scale, zero point) by `qdq.params_from_range`.
Histograms use the min-max range of a first pass, so two passes run over the crops; the result
depends only on the inputs (same file for the same inputs).
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..errors import DataError
from . import qdq
from .fileformat import FORMAT, expected_keys, layout, stage_of
from .network import Float, Walk, check_stages, float_weights

METHODS = ("minmax", "percentile", "entropy")
DEFAULT_METHOD = "minmax"           # the best AP of the three on tiny-synthetic (docs/int8.md), as ONNX Runtime's default
BINS = 2048
PERCENTILE = 99.999
QUANT_BINS = 128
CROPS_PER_FORWARD = 8
MAX_CALIB_IMAGES = 1000


# --- calibration inputs --------------------------------------------------------------------------
def calibration_images(folder: str) -> list[str]:
    """The image files of a folder, sorted; DataError if it has none."""
    from ..fileio import path_problem
    from ..pose.imageio import IMAGE_SUFFIXES

    problem = path_problem(folder, folder=True)
    if problem:
        raise DataError(f"{folder}: {problem}")
    names = sorted(n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES)
    paths = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
    if not paths:
        raise DataError(f"{folder}: no image files to calibrate on")
    return paths[:MAX_CALIB_IMAGES]


def calibration_crops(paths: list[str], cfg, boxes: str | None = None) -> np.ndarray:
    """The network inputs (n, 3, H, W) float32 of every person of every image: boxes from a COCO
    detection-results file, else the whole image; crops and normalisation as `refpose infer`."""
    from ..config import variant_of
    from ..pose.boxes import boxes_for_image, load_detections
    from ..pose.crop import normalize
    from ..pose.imageio import read_image
    from ..pose.pipeline import crop_persons

    detections = load_detections(boxes) if boxes else None
    crops = []
    for path in paths:
        image = read_image(path)
        b, scores, _ = boxes_for_image(os.path.basename(path), None, detections)
        crops.append(crop_persons(image, b, scores, cfg.input_size).crops)
    crops = np.concatenate(crops)
    if not len(crops):
        raise DataError("no person box in the calibration images (DETS.json matched none of them)")
    v = variant_of(cfg.name)
    return normalize(crops, v.mean, v.std)


# --- ranges ---------------------------------------------------------------------------------------
class _MinMax:
    def __init__(self):
        self.lo, self.hi = {}, {}

    def __call__(self, name, x):
        lo, hi = float(np.min(x)), float(np.max(x))
        self.lo[name] = min(lo, self.lo.get(name, lo))
        self.hi[name] = max(hi, self.hi.get(name, hi))


class _Histograms:
    """Histograms of each tensor's values over its min-max range, and of |x| over [0, max|x|]."""

    def __init__(self, mm: _MinMax):
        self.mm, self.values, self.absolute = mm, {}, {}

    def __call__(self, name, x):
        x = np.asarray(x, np.float64).reshape(-1)
        lo, hi = self.mm.lo[name], self.mm.hi[name]
        if hi > lo:
            h, _ = np.histogram(x, BINS, (lo, hi))
            self.values[name] = self.values.get(name, 0) + h
        top = max(abs(lo), abs(hi))
        if top > 0:
            h, _ = np.histogram(np.abs(x), BINS, (0.0, top))
            self.absolute[name] = self.absolute.get(name, 0) + h


def percentile_range(hist: np.ndarray, lo: float, hi: float, p: float = PERCENTILE) -> tuple[float, float]:
    """The (100 - p) % and p % points of a histogram over [lo, hi] (bin edges)."""
    cdf = np.cumsum(hist) / hist.sum()
    edges = np.linspace(lo, hi, len(hist) + 1)
    left = int(np.searchsorted(cdf, 1 - p / 100))
    right = int(np.searchsorted(cdf, p / 100))
    return float(edges[left]), float(edges[min(right + 1, len(hist))])


def entropy_threshold(hist: np.ndarray, top: float, quant_bins: int = QUANT_BINS) -> float:
    """The threshold on |x| of least KL divergence (TensorRT's calibration, Migacz 2017): for each
    candidate i (bins kept), P = hist[:i] with the clipped tail added to its last bin; Q = hist[:i]
    merged into `quant_bins` bins, each spread evenly over the bins where P is not empty; both
    smoothed where empty; candidates every 8 bins. The bin of zero is left out: after a ReLU it
    holds most values, which every threshold keeps exact, and it pulled the threshold to the
    smallest candidate (AP 0 on tiny-synthetic)."""
    hist = hist.astype(np.float64)
    hist[0] = 0          # exact zeros (a ReLU's floor) cost nothing at any threshold: left out, or they win it
    tail = np.cumsum(hist[::-1])[::-1]                     # tail[i] = hist[i:].sum()
    best, best_i = np.inf, len(hist)
    eps = 1e-4
    for i in range(quant_bins, len(hist) + 1, 8):
        p = hist[:i].copy()
        if i < len(hist):
            p[-1] += tail[i]
        nonzero = p > 0
        starts = (np.arange(quant_bins) * i) // quant_bins
        sums = np.add.reduceat(hist[:i], starts)
        counts = np.add.reduceat(nonzero.astype(np.float64), starts)
        lengths = np.diff(np.append(starts, i))
        q = np.repeat(np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0), lengths) * nonzero
        if q.sum() == 0:
            continue
        ps = p / p.sum()
        qs = q / q.sum()
        ps, qs = np.where(ps > 0, ps, eps * 1e-3), np.where(qs > 0, qs, eps * 1e-3)
        kl = float(np.sum(ps * np.log(ps / qs)))
        if kl < best:
            best, best_i = kl, i
    return top * best_i / len(hist)


def ranges(mm: _MinMax, hists: _Histograms | None, method: str) -> dict[str, tuple[float, float]]:
    out = {}
    for name in mm.lo:
        lo, hi = mm.lo[name], mm.hi[name]
        if method == "percentile" and name in hists.values:
            lo, hi = percentile_range(hists.values[name], lo, hi)
        elif method == "entropy" and name in hists.absolute:
            t = entropy_threshold(hists.absolute[name], max(abs(lo), abs(hi)))
            lo, hi = max(lo, -t), min(hi, t)
        out[name] = (lo, hi)
    return out


# --- quantizing ---------------------------------------------------------------------------------
def calibrate(model, crops: np.ndarray, method: str = DEFAULT_METHOD) -> dict[str, tuple[float, float]]:
    """{activation name: (rmin, rmax)} from running the float model over the crops."""
    if method not in METHODS:
        raise DataError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    walk, weights = Walk(model.config), float_weights(model)

    def run(observe):
        for i in range(0, len(crops), CROPS_PER_FORWARD):
            x = crops[i:i + CROPS_PER_FORWARD].transpose(0, 2, 3, 1)
            arith = Float(weights, "float32", observe)
            walk.run(lambda stage: arith, x)

    mm = _MinMax()
    run(mm)
    hists = None
    if method != "minmax":
        hists = _Histograms(mm)
        run(hists)
    return ranges(mm, hists, method)


def quantize_tensors(model, act_ranges: dict, float_stages=()) -> dict[str, np.ndarray]:
    """The int8 file's tensors (see `refpose.quant.fileformat`) from a float model and activation ranges."""
    cfg = model.config
    float_stages = check_stages(float_stages)
    units, acts, norms = layout(cfg)
    weights = float_weights(model)
    out = {}
    for name in acts:
        s, z = qdq.params_from_range(*act_ranges[name])
        out[f"{name}.y_scale"], out[f"{name}.y_zero_point"] = np.array(s, np.float32), np.array(z, np.uint8)
    inputs = _unit_inputs(cfg)
    for path, (shape, axis) in units.items():
        w, b = (np.asarray(a, np.float32) for a in weights[path])
        w = w.reshape(shape)
        if stage_of(path) in float_stages:
            out[f"{path}.weight"], out[f"{path}.bias"] = w, b
            continue
        q, sw = qdq.quantize_weights(w, axis)
        out[f"{path}.weight"], out[f"{path}.weight_scale"] = q, sw
        out[f"{path}.bias"] = qdq.quantize_bias(b, out[f"{inputs[path]}.y_scale"], sw)
    for path in norms:
        w, b = weights[path]
        out[f"{path}.weight"], out[f"{path}.bias"] = np.asarray(w, np.float32), np.asarray(b, np.float32)
    want = expected_keys(cfg, float_stages)
    assert set(out) == set(want), sorted(set(out) ^ set(want))[:3]
    return out


def _unit_inputs(cfg) -> dict[str, str]:
    """{unit path: the activation name of its input}, read off a walk that passes names around."""
    inputs = {}

    class Names:
        def has(self, path):
            return path in units

        def shape(self, x):
            return (1, 1, 1, 1)

        def convert(self, x, name):
            return name

        def conv(self, path, x, kind, k, stride, act):
            inputs[path] = x
            return path

        def linear(self, path, x):
            inputs[path] = x
            return path

        def add(self, name, a, b):
            return name

        def layer_norm(self, path, x):
            return path

        def attention(self, path, qkv, heads, kind, window, patch):
            return f"{path}.attn"

        def squeeze_excite(self, path, x):
            inputs[f"{path}.fc1"], inputs[f"{path}.fc2"] = f"{path}.pool", f"{path}.fc1"
            return path

        def head(self, path, x):
            inputs[path] = x
            return path

    units, _, _ = layout(cfg)
    names = Names()
    Walk(cfg).run(lambda stage: names, None)
    return inputs


def quantize_file(weights: str, calib: str, out: str, boxes: str | None = None, method: str = DEFAULT_METHOD,
                  float_stages=()) -> dict:
    """`refpose quantize`: read float weights, calibrate on the images of `calib`, write the int8
    file `out`. Returns a summary (config, images, crops, method)."""
    from ..fileio import check_output_path
    from ..weights import float_file, from_tensors, read_weights

    wf = read_weights(weights)
    float_file(wf)
    cfg = wf.config_for(None)
    float_stages = check_stages(float_stages)
    paths = calibration_images(calib)
    check_output_path(out, [wf.path, boxes, *paths])      # before the calibration, not after it
    model = from_tensors(wf.tensors, cfg, "float32", "reference", source=wf.path)
    crops = calibration_crops(paths, cfg, boxes)
    act_ranges = calibrate(model, crops, method)
    tensors = quantize_tensors(model, act_ranges, float_stages)
    summary = {"method": method, "images": len(paths), "crops": int(len(crops))}
    save_int8(out, tensors, cfg, float_stages=float_stages,
              meta_extra={"trained": "true" if wf.trained else "false",
                          "calibration": json.dumps(summary, sort_keys=True),
                          "quantized_from": os.path.basename(wf.path)})
    return {"config": cfg.name, "float_stages": float_stages, **summary}


def save_int8(path: str, tensors: dict, config, meta_extra: dict | None = None, float_stages=()) -> None:
    """Write int8 tensors as an int8 file (for tests and tools that edit one)."""
    from safetensors.numpy import save

    from ..config import get_config
    from ..fileio import write_atomic
    from ..weights import _sorted_metadata

    meta = {"format": FORMAT, "config": get_config(config).to_json(), "trained": "false",
            "float_stages": ",".join(check_stages(float_stages)), "calibration": "{}", **(meta_extra or {})}
    write_atomic(path, _sorted_metadata(save({k: np.array(v, order="C") for k, v in sorted(tensors.items())},
                                             metadata=meta)))


__all__ = ["METHODS", "DEFAULT_METHOD", "calibrate", "quantize_file", "quantize_tensors", "save_int8"]
