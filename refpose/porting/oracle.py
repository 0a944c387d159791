"""refpose as an oracle for other backends: compare a backend's outputs with refpose float64,
tap by tap, and write golden files for backends that cannot run Python.

A backend runs in float32 (or float64) on the same inputs as refpose's float64 reference path
(`impl="reference"`). The inputs are drawn as float32 values, so both sides see exactly the
same numbers. Every stage output is a *tap* (stem, s1..s4, d1..d3, head; DESIGN section 1);
the error of a tap is measured relative to its scale,

    rel = max |got - ref| / max |ref|,

because elementwise relative errors are meaningless next to the zeros ReLU6 makes. A backend
passes when the heatmaps' `rel` is within the tolerance of its dtype; when it does not, the
first tap beyond the tolerance names the stage where the backend departs from refpose.

Tolerances (float32 or float64 backend vs the float64 reference). A K-term dot product in a
precision with unit roundoff u carries a relative error of about sqrt(K)·u when roundings are
independent (the probabilistic bound of Higham and Mary, SIAM J. Sci. Comput. 2019); along the
L layers of the longest path, most of them inside residual branches, independent errors add in
quadrature. For wgnet, K <= 1152 in convolutions, linears and attention (s4's projection 1×1
conv, 6·192 inputs; SE's 3072-term mean only reaches the map through a sigmoid of slope <= 1/4),
and L ~ 170 (4 stem convs, 29 layers in each of s1..s3, 27 in s4, 16 in each decoder stage, and
the head; an attention branch counts LayerNorm, qkv, QK^T, AV and the projection), so
sqrt(L)·sqrt(K) ~ 440 and the expected error is ~440·u. The tolerance is four times that,
rounded, for weights less well conditioned than seeded ones (sharper softmax, LayerNorm on
low-variance maps):

    float32: u = 2^-24 = 6.0e-8 -> 4·440·u = 1.05e-4 -> 1e-4
    float64: u = 2^-53 = 1.1e-16 -> 4·440·u = 2.0e-13 -> 2e-13

Measured on seeded weights (seeds 0 and 1, two inputs each), largest over all taps: 1.3e-6 on
tiny and 1.4e-6 on wgnet, for the PyTorch twin in float32 and ONNX Runtime (opset 17) alike
(margin 70×); 6.5e-15 for the twin in float64 (margin 30×). A BatchNorm eps of 1e-4 instead of
1e-5 moves the heatmaps by 6e-4 and is caught; a LayerNorm eps of 1e-6 instead of 1e-5 moves
them by only 8e-5, which is the float64 comparison's job (4e8 times its tolerance).

Looser modes, used only when asked for (the conformance suite's --refpose-precision). A model
that stores its activations in float16, or quantises them to int8, rounds every layer's output
to that precision; these roundings dominate the dot products' (which such backends accumulate
in float32 or int32) and, independent along the L ~ 170 layers, add in quadrature to about
sqrt(L)·u ~ 13·u of the scale. Four times that, rounded up:

    float16: u = 2^-11 = 4.9e-4 -> 4·13·u = 2.5e-2 -> 3e-2
    int8, symmetric per tensor (step max/127, so u = 1/254 = 3.9e-3) -> 4·13·u = 0.2

Measured for the PyTorch twin in float16 on seeded weights, largest over all taps: 4.9e-3 on
tiny (three inputs) and 4.4e-3 on wgnet (the photo input), a margin of 6x. The int8 figure is
derived only.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np

from ..config import WGNetConfig, get_config
from ..fileio import check_output_path, read_npz, write_atomic
from ..errors import BackendError, DataError, InputShapeError
from ..model import TAPS, tap_shapes
from .onnx_export import OUTPUT_NAME, TAP_OUTPUTS, resolve_weights

TOLERANCES = {"float32": 1e-4, "float64": 2e-13}   # rel error vs the float64 reference; see above
LOW_PRECISION_TOLERANCES = {"float16": 3e-2, "int8": 0.2}   # only when asked for; see above
TOLERANCE_REASONS = {
    "float32": "float32 backend vs float64 reference: 4·sqrt(L·K)·u, L ~ 170 layers, K <= 1152 terms, "
               "u = 2^-24 (refpose.porting.oracle)",
    "float64": "float64 backend vs float64 reference: 4·sqrt(L·K)·u, L ~ 170 layers, K <= 1152 terms, "
               "u = 2^-53 (refpose.porting.oracle)",
    "float16": "float16 activations: 4·sqrt(L)·u, L ~ 170 layers, u = 2^-11 (refpose.porting.oracle)",
    "int8": "int8 activations, symmetric per tensor: 4·sqrt(L)·u, L ~ 170 layers, u = 1/254 (refpose.porting.oracle)",
}
DUMP_FORMAT = "refpose-oracle/1"
DUMP_KEYS = ("input",) + TAP_OUTPUTS + (OUTPUT_NAME,)
# what a golden file (or a port's outputs) may unpack to: 64 wgnet inputs with every tap in float64,
# the most `refpose oracle dump --inputs` writes, take 0.62 GB
MAX_GOLDEN_BYTES = 1 << 30


def tolerance(dtype) -> float:
    """The stated tolerance (rel error to max|ref|) of a backend computing in `dtype`."""
    name = np.dtype(dtype).name
    if name not in TOLERANCES:
        raise BackendError(f"no stated tolerance for a {name} backend (only "
                              f"{', '.join(TOLERANCES)}); give rtol explicitly")
    return TOLERANCES[name]


def stated_tolerance(precision: str) -> tuple[float, str]:
    """(rtol, its justification) for a backend computing in `precision`: float32, float64, or
    one of the looser modes float16 and int8."""
    rtol = {**TOLERANCES, **LOW_PRECISION_TOLERANCES}.get(precision)
    if rtol is None:
        raise BackendError(f"no stated tolerance for {precision!r} (only {', '.join(TOLERANCE_REASONS)})")
    return rtol, TOLERANCE_REASONS[precision]


# --- inputs and the reference -----------------------------------------------------------------
def make_inputs(config, n: int = 2, seed: int = 0) -> np.ndarray:
    """`n` seeded inputs (n, 3, H, W) at the config's input size: standard normal (the scale of a
    normalised image, DESIGN section 1), rounded to float32 and returned as float64, so that a
    float32 backend and the float64 reference see exactly the same values."""
    cfg = get_config(config)
    if n < 1:
        raise InputShapeError(f"the number of inputs must be at least 1, got {n}")
    H, W = cfg.input_size
    x = np.random.default_rng(seed).standard_normal((n, 3, H, W))
    return x.astype(np.float32).astype(np.float64)


def reference_model(weights, config=None):
    """refpose in float64 on the plain NumPy ops (impl="reference"): the oracle path."""
    from ..weights import from_tensors

    tensors, cfg = resolve_weights(weights, config)
    return from_tensors(tensors, cfg, "float64", "reference", source=_source(weights))


def reference_taps(weights, inputs: np.ndarray, config=None) -> dict[str, np.ndarray]:
    """Every tap (stem, s1..s4, d1..d3, head) in float64 for these weights and inputs (NCHW)."""
    model = reference_model(weights, config)
    return model.taps(np.asarray(inputs, dtype=np.float64))


# --- comparison -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TapError:
    """How far one tap of a backend is from the reference, and where it is farthest."""

    name: str
    abs_err: float                  # max |got - ref| (inf if the backend gave NaN or inf)
    rel_err: float                  # abs_err / max |ref|
    scale: float                    # max |ref|
    index: tuple[int, ...]          # (n, c, h, w) of the largest error
    got: float
    ref: float

    def within(self, rtol: float) -> bool:
        return self.rel_err <= rtol

    def where(self) -> str:
        return f"[{', '.join(map(str, self.index))}] (got {self.got:.6g}, ref {self.ref:.6g})"

    def summary(self) -> str:
        return (f"max abs error {self.abs_err:.3g}, max rel error {self.rel_err:.3g} "
                f"(to max|ref| = {self.scale:.4g})")


def tap_error(name: str, got, ref) -> TapError:
    """Max abs error, error relative to max|ref|, and the index where the error is largest."""
    got, ref = np.asarray(got), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise AssertionError(f"tap {name}: shape {got.shape}, the reference has {ref.shape}")
    diff = np.abs(got.astype(np.float64) - ref)
    diff[~np.isfinite(diff)] = np.inf           # a NaN from the backend is the worst error
    flat = int(np.argmax(diff))
    abs_err = float(diff.flat[flat])
    scale = float(np.abs(ref).max())
    rel_err = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else np.inf)
    index = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
    return TapError(name, abs_err, rel_err, scale, index, float(got.flat[flat]), float(ref.flat[flat]))


@dataclass
class Comparison:
    """The output's error and, tap by tap, where a backend departs from the reference."""

    output: TapError
    taps: list[TapError]             # the taps the backend gave, in network order (head included)
    rtol: float
    missing: tuple[str, ...] = ()    # taps the backend did not give
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.output.within(self.rtol)

    @property
    def first_divergent(self) -> TapError | None:
        """The first tap (network order) beyond the tolerance; None if the output is within it
        or the backend gave no taps besides the heatmaps (nothing to locate with)."""
        if self.passed or all(t.name == "head" for t in self.taps):
            return None
        return next((t for t in self.taps if not t.within(self.rtol)), None)

    def lines(self) -> list[str]:
        o = self.output
        verdict = "within tolerance" if self.passed else "BEYOND tolerance"
        out = list(self.notes)
        out.append(f"heatmaps: {o.summary()}; rtol {self.rtol:.3g}: {verdict}")
        if self.passed:
            return out
        inner = [t for t in self.taps if t.name != "head"]
        if not inner:
            out.append("the backend gives no taps, so the diverging stage cannot be located (a "
                       "`refpose export-onnx` file, with or without --taps, names its stage tensors "
                       "stem, s1..s4, d1..d3; for another model, map them with --tap NAME=TENSOR)")
            out.append(f"largest heatmap error at {o.where()}")
            return out
        first = self.first_divergent
        out += self.table()
        out.append(f"first diverging tap: {first.name} (rel error {first.rel_err:.3g}, abs {first.abs_err:.3g}, "
                   f"largest at index {list(first.index)} of (N, C, H, W)); {self._hint(first)}")
        return out

    def table(self) -> list[str]:
        """Every tap given, in network order, with its rel error and verdict."""
        out = ["taps (rel error = max|got - ref| / max|ref|):"]
        first = next((t for t in self.taps if not t.within(self.rtol)), None)
        for t in self.taps:
            mark = "ok" if t.within(self.rtol) else "DIVERGES"
            if t is first:
                mark += f"  <- first, largest at {t.where()}"
            out.append(f"  {t.name:5s} {t.rel_err:9.3g}  {mark}")
        if self.missing:
            out.append(f"  (not given by the backend: {', '.join(self.missing)})")
        return out

    def _hint(self, first: TapError) -> str:
        before = self.taps[:self.taps.index(first)]
        if not before:
            return ("it is the first tap given: the defect is in it or before it" if first.name != "stem"
                    else "the defect is in the stem")
        return f"{before[-1].name} agrees, so the defect is in the layers between {before[-1].name} and {first.name}"


def as_taps(outputs) -> dict[str, np.ndarray]:
    """A backend's outputs as {tap: array}: a dict keyed by tap names ("heatmaps" for "head"),
    or one array (the heatmaps). torch tensors are taken as they come (CPU, no grad)."""
    if not isinstance(outputs, dict):
        return {"head": np.asarray(outputs)}
    taps = {}
    for key, value in outputs.items():
        name = "head" if key == OUTPUT_NAME else key
        if name not in TAPS:
            raise AssertionError(f"unknown output {key!r}; outputs are named {OUTPUT_NAME!r} "
                                 f"and the taps {', '.join(TAP_OUTPUTS)}")
        taps[name] = np.asarray(value.detach() if hasattr(value, "detach") else value)
    if "head" not in taps:
        raise AssertionError(f"the outputs have no {OUTPUT_NAME!r} (or 'head')")
    return taps


def compare(outputs, reference: dict[str, np.ndarray], rtol: float) -> Comparison:
    """Compare a backend's outputs (see `as_taps`) with reference taps (`reference_taps`)."""
    got = as_taps(outputs)
    ref = {("head" if k == OUTPUT_NAME else k): v for k, v in reference.items()}
    absent = [k for k in got if k not in ref]
    if absent:
        raise AssertionError(f"the reference has no tap {absent[0]!r} (it has {', '.join(ref)})")
    errors = [tap_error(k, got[k], ref[k]) for k in TAPS if k in got]
    output = next(e for e in errors if e.name == "head")
    missing = tuple(k for k in TAPS if k not in got)
    return Comparison(output, errors, rtol, missing)


def oracle_onnx(onnx_path, weights, n: int = 2, seed: int = 0, rtol: float | None = None,
                config=None, taps: "dict[str, str] | None" = None) -> Comparison:
    """Run an ONNX file with ONNX Runtime and refpose float64 on the same seeded inputs, and
    compare (`refpose oracle --onnx`); `taps` maps stage names to another model's tensors."""
    from .runtimes import OnnxBackend

    backend = OnnxBackend(onnx_path, taps)
    tensors, cfg = resolve_weights(weights, config)
    backend.check(cfg, _source(weights))
    rtol = tolerance(backend.dtype) if rtol is None else float(rtol)
    x = make_inputs(cfg, n, seed)
    got, want = backend.run(x), tap_shapes(cfg, n)
    for name, array in got.items():
        if array.shape != want[name]:
            raise BackendError(f"{backend.path}: output {OUTPUT_NAME if name == 'head' else name!r} "
                               f"has shape {array.shape}, expected {want[name]}")
    result = compare(got, reference_taps(tensors, x, cfg), rtol)
    result.notes.append(f"{backend.path}: ONNX Runtime, {backend.dtype.name}, config {cfg.name}; "
                        f"reference: refpose float64 on {_source(weights)}; {n} input(s), seed {seed}")
    return result


def _source(weights) -> str:
    return "weights (dict)" if isinstance(weights, dict) else str(weights)


# --- golden files -----------------------------------------------------------------------------
def dump(weights, out_path, n: int = 2, seed: int = 0, config=None) -> WGNetConfig:
    """Write golden data (`refpose oracle dump`): a .npz, readable without pickle, with

    input              (N, 3, H, W) float64, exactly representable in float32
    stem, s1..s4, d1..d3  every stage output, NCHW float64
    heatmaps           (N, K, H/4, W/4) float64, the output (the tap "head")
    config             the config as JSON (0-d string); format "refpose-oracle/1"; seed (0-d int)
    """
    if not isinstance(weights, dict):
        check_output_path(out_path, [weights])     # before the work, not after it
    tensors, cfg = resolve_weights(weights, config)
    x = make_inputs(cfg, n, seed)
    taps = reference_taps(tensors, x, cfg)
    arrays = {"input": x, **{k: taps[k] for k in TAP_OUTPUTS}, OUTPUT_NAME: taps["head"],
              "config": np.array(cfg.to_json()), "format": np.array(DUMP_FORMAT), "seed": np.array(seed)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(out_path, buffer.getvalue())
    return cfg


@dataclass
class Golden:
    """Golden data read back: inputs, reference taps ("head" = heatmaps), config, seed."""

    inputs: np.ndarray
    taps: dict[str, np.ndarray]
    config: WGNetConfig
    seed: int


def load_dump(path) -> Golden:
    """Read a file written by `dump` (no pickle), checking its keys, shapes and types before use."""
    path = str(path)
    arrays = read_npz(path, "golden file", MAX_GOLDEN_BYTES)
    fmt = arrays.get("format")
    if fmt is None or fmt.ndim != 0 or fmt.dtype.kind not in "US" or str(fmt) != DUMP_FORMAT:
        raise DataError(f"{path}: not a refpose golden file (format {DUMP_FORMAT!r} expected)")
    missing = [k for k in DUMP_KEYS + ("config", "seed") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing key {missing[0]!r}")
    config, seed, x = arrays["config"], arrays["seed"], arrays["input"]
    if config.ndim != 0 or config.dtype.kind not in "US":
        raise DataError(f"{path}: 'config' must be the config as a JSON string, got an array of shape {config.shape}")
    try:
        cfg = get_config(json.loads(str(config)))
    except (ValueError, TypeError, RecursionError) as e:      # JSONDecodeError and ConfigError are ValueErrors
        raise DataError(f"{path}: 'config' is not a refpose config: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if seed.ndim != 0 or seed.dtype.kind not in "iu":
        raise DataError(f"{path}: 'seed' must be one integer, got an array of shape {seed.shape} ({seed.dtype})")
    if x.ndim != 4 or len(x) == 0:
        raise DataError(f"{path}: 'input' must have shape (N, 3, H, W) with N >= 1, got {x.shape}")
    n = len(x)
    for name, shape in {"input": (n, 3, *cfg.input_size), **tap_shapes(cfg, n)}.items():
        key = OUTPUT_NAME if name == "head" else name
        if arrays[key].shape != shape:
            raise DataError(f"{path}: {key!r} has shape {arrays[key].shape}, expected {shape}")
        if arrays[key].dtype.kind != "f":
            raise DataError(f"{path}: {key!r} holds {arrays[key].dtype}, expected floating-point numbers")
    taps = {k: arrays[k] for k in TAP_OUTPUTS}
    taps["head"] = arrays[OUTPUT_NAME]
    return Golden(arrays["input"], taps, cfg, int(arrays["seed"]))
