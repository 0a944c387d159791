"""The one place that opens ONNX Runtime and OpenVINO: sessions for the bench, the oracle, the
conformance suite and the person detector, and the backends that run a port's model file with
its stage tensors exposed.

Every session runs on the CPU with threads that sleep between calls (a spinning pool would take
the cores from whatever runs next: refpose's kernels, another candidate of the bench) and one
node at a time; OpenVINO infers in float32 (its CPU plugin would otherwise use bfloat16 where the
hardware has it) with one stream and no threads pinned to cores.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..config import WGNetConfig, get_config
from ..errors import BackendError, InputShapeError, WeightsError
from ..fileio import path_problem
from ..model import TAPS, tap_shapes
from .onnx_export import INPUT_NAME, META_CONFIG, OUTPUT_NAME, TAP_OUTPUTS


def _require(module: str, extra: str):
    """The runtime's module, or BackendError naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendError(f"{module} is not installed: pip install 'refpose[{extra}]'") from None


def _check_model_path(path: str, what: str) -> None:
    """BackendError naming why a model path cannot be read (`refpose.fileio.path_problem`): a named
    pipe would block the runtime's open forever."""
    problem = path_problem(path, kind=f"an {what}" if what[0] in "aeiou" else f"a {what}")
    if problem:
        raise BackendError(f"{path}: {problem if problem != 'no such file' else f'no such {what}'}")


def ort_session(model: "str | bytes", threads: int | None = None, profile_prefix: str | None = None,
                optimization: str = "all"):
    """An ONNX Runtime CPU session of a model file (or its bytes): spinning off, one node at a
    time, warnings off; `threads` intra-op threads (and one inter-op) when given; with
    `profile_prefix`, ONNX Runtime's own profiler on. `optimization` "basic" stops ONNX Runtime's
    graph rewrites at its basic level: a QDQ model then runs as written (DequantizeLinear, the
    float op, QuantizeLinear) instead of fused into integer kernels."""
    ort = _require("onnxruntime", "onnx")
    so = ort.SessionOptions()
    if optimization == "basic":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3                  # no warnings on stderr for every model
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def openvino_compile(model, threads: int | None = None, core=None):
    """A model (a path, or one read by `core.read_model`) compiled for OpenVINO's CPU plugin:
    float32 inference, latency hint, one stream, threads not pinned; `threads` when given."""
    ov = _require("openvino", "openvino")
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
              "ENABLE_CPU_PINNING": False, "ENABLE_HYPER_THREADING": False}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return (core or ov.Core()).compile_model(model, "CPU", config)


# --- a port's model file, its stage tensors exposed ---------------------------------------------------
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


class OnnxBackend:
    """An ONNX file run with ONNX Runtime on the CPU, checked against the interface of
    `refpose export-onnx`: one input `input` (N, 3, H, W), output `heatmaps`.

    The stage tensors are exposed as extra outputs of a copy of the model, whether or not the
    file lists them as outputs: those named `stem, s1..s4, d1..d3` (refpose's exports name them
    with or without --taps), or, for another model, those `taps` maps to our names
    ({"s3": "their/tensor", "heatmaps": "their_output"}). Other outputs are ignored."""

    def __init__(self, path: "str | os.PathLike", taps: "dict[str, str] | None" = None, optimization: str = "all"):
        _require("onnxruntime", "onnx")
        self.path = str(path)
        self.name = f"ONNX Runtime ({self.path})"
        _check_model_path(self.path, "ONNX file")
        model, tensors = _expose_stages(self.path, dict(taps or {}))
        try:
            self.session = ort_session(model, optimization=optimization)
        except Exception as e:   # onnxruntime raises its own exception types for a bad file
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(f"{self.path}: not a loadable ONNX model ({reason})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            names = ", ".join(repr(i.name) for i in inputs)
            raise BackendError(f"{self.path}: the model's inputs are {names}; expected one input named {INPUT_NAME!r}")
        self.input = inputs[0]
        if self.input.type not in _ORT_TYPES:
            raise BackendError(f"{self.path}: input {INPUT_NAME!r} is {self.input.type}, expected a float tensor")
        self.dtype = np.dtype(_ORT_TYPES[self.input.type])
        outputs = {o.name: o for o in self.session.get_outputs()}
        if tensors is None:                   # no onnx package: the file's own outputs only
            tensors = {("head" if k == OUTPUT_NAME else k): k for k in outputs if k in TAP_OUTPUTS + (OUTPUT_NAME,)}
        if "head" not in tensors:
            raise BackendError(f"{self.path}: the model has no output named {OUTPUT_NAME!r} "
                               f"(its outputs: {', '.join(outputs)}); map one with --tap {OUTPUT_NAME}=TENSOR")
        self.tensors = {k: tensors[k] for k in TAPS if k in tensors}      # {tap: tensor}, network order
        self.output_info = {k: outputs[t] for k, t in self.tensors.items()}
        meta = self.session.get_modelmeta().custom_metadata_map
        self.config: WGNetConfig | None = None
        if meta.get(META_CONFIG):
            try:
                self.config = get_config(json.loads(meta[META_CONFIG]))
            except ValueError as e:            # JSONDecodeError and ConfigError are ValueErrors
                raise BackendError(f"{self.path}: the refpose config in its metadata is not valid: {e}") from None

    @property
    def batch(self) -> int | None:
        """The fixed batch size of the input, or None when it is dynamic."""
        n = self.input.shape[0] if self.input.shape else None
        return n if isinstance(n, int) else None

    def check(self, config, weights_name: str = "weights") -> None:
        """Raise (WeightsError, BackendError) unless the model fits this config."""
        cfg = get_config(config)
        if self.config is not None and self.config != cfg:
            raise WeightsError(f"{weights_name}: weights for config {cfg.name!r}, but {self.path} was "
                               f"exported for config {self.config.name!r}")
        want = tap_shapes(cfg)
        want_input = (None, 3) + cfg.input_size
        self._check_shape(INPUT_NAME, self.input.shape, want_input, cfg)
        for tap, o in self.output_info.items():
            self._check_shape(o.name, o.shape, want[tap], cfg)

    def _check_shape(self, name: str, shape, want: tuple, cfg: WGNetConfig) -> None:
        """Check the dimensions the file states; an unknown rank is checked when it runs."""
        if not shape:
            return
        shown = tuple(d if isinstance(d, int) else (d or "?") for d in shape)
        expected = ("N",) + tuple(want[1:])
        fixed = [(d, w) for d, w in zip(shape, want) if isinstance(d, int) and w is not None]
        if len(shape) != len(want) or any(d != w for d, w in fixed):
            raise BackendError(f"{self.path}: {name!r} has shape {shown}, but config {cfg.name!r} "
                               f"needs {expected}")

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run on a batch (N, 3, H, W); returns {tap: array}, "heatmaps" as "head"."""
        x = np.ascontiguousarray(x, dtype=self.dtype)
        b = self.batch
        if b is not None and len(x) % b:
            raise InputShapeError(f"{self.path} takes batches of exactly {b}; "
                                  f"{len(x)} inputs do not split into them")
        chunks = [x] if b is None else [x[i:i + b] for i in range(0, len(x), b)]
        try:
            runs = [self.session.run(list(self.tensors.values()), {INPUT_NAME: c}) for c in chunks]
        except Exception as e:   # onnxruntime's own exception types
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(f"{self.path}: ONNX Runtime failed on input {chunks[0].shape}: {reason}") from None
        return {tap: np.concatenate([r[i] for r in runs]) for i, tap in enumerate(self.tensors)}


def _expose_stages(path: str, taps: dict[str, str]) -> "tuple[bytes | str, dict[str, str] | None]":
    """The model (serialised) with its stage tensors added to the outputs, and {tap: tensor}.

    A stage's tensor is the one `taps` names for it, else the tensor named after the stage.
    Without the onnx package the file is run as it is (None: its outputs name the taps)."""
    try:
        import onnx
    except ImportError:
        if taps:
            raise BackendError("mapping tensors to stages (--tap) needs the onnx package: pip install onnx") from None
        return path, None
    try:
        model = onnx.load(path)
    except Exception as e:   # protobuf's DecodeError and others for a damaged file
        raise BackendError(f"{path}: not a loadable ONNX model ({type(e).__name__})") from None
    graph = model.graph
    produced = {t for node in graph.node for t in node.output} | {o.name for o in graph.output}
    tensors = stage_tensors(path, produced, taps)
    outputs = {o.name for o in graph.output}
    known = {v.name: v for v in graph.value_info}
    for tensor in tensors.values():
        if tensor not in outputs:   # an output's type may be left for ONNX Runtime to infer
            graph.output.append(known.get(tensor) or onnx.helper.make_empty_tensor_value_info(tensor))
    return model.SerializeToString(), tensors


def parse_taps(items: "list[str]") -> dict[str, str]:
    """["s3=their/tensor", ...] (--tap NAME=TENSOR, repeatable) -> {"s3": "their/tensor"}."""
    taps = {}
    for text in items:
        name, sep, tensor = text.partition("=")
        if not (sep and name and tensor):
            raise BackendError(f"--tap {text!r}: expected NAME=TENSOR")
        taps[name] = tensor
    check_tap_names(taps)
    return taps


def check_tap_names(taps: dict[str, str]) -> None:
    """Raise BackendError unless every key of a --tap mapping is a stage or the output."""
    names = TAP_OUTPUTS + (OUTPUT_NAME,)
    unknown = [k for k in taps if k not in names]
    if unknown:
        raise BackendError(f"--tap {unknown[0]}=...: not a stage; the names are {', '.join(names)}")


def stage_tensors(path: str, available: "set[str]", taps: dict[str, str]) -> dict[str, str]:
    """{tap: tensor} ("head" for the heatmaps, in network order): the tensor `taps` names for a
    stage or the output, else the one named after it, among the model's `available` tensors."""
    check_tap_names(taps)
    tensors = {k: taps.get(k, k) for k in TAP_OUTPUTS + (OUTPUT_NAME,) if k in taps or k in available}
    absent = [t for t in tensors.values() if t not in available]
    if absent:
        raise BackendError(f"{path}: no tensor named {absent[0]!r} in the graph (--tap)")
    tensors = {("head" if k == OUTPUT_NAME else k): t for k, t in tensors.items()}
    return {k: tensors[k] for k in TAPS if k in tensors}


class OpenVinoBackend:
    """An ONNX or OpenVINO IR file run by OpenVINO on the CPU in float32, with the stage tensors
    (named as in `refpose export-onnx`, or mapped by `taps`) added as outputs."""

    dtype = np.dtype(np.float32)

    def __init__(self, path: str, taps: "dict[str, str] | None" = None):
        ov = _require("openvino", "openvino")
        _check_model_path(path, "model file")
        self.path, self.name = path, f"OpenVINO ({path})"
        core = ov.Core()
        try:
            model = core.read_model(path)
        except Exception as e:   # OpenVINO raises RuntimeError subclasses of its own
            raise BackendError(f"{path}: OpenVINO cannot read it ({str(e).strip().splitlines()[0]})") from None
        available = {n for op in model.get_ops() for out in op.outputs() for n in out.get_names()}
        self.tensors = stage_tensors(path, available, dict(taps or {}))
        if "head" not in self.tensors:
            raise BackendError(f"{path}: the model has no tensor named 'heatmaps'; map one with "
                               "--refpose-tap heatmaps=TENSOR")
        outputs = {n for out in model.outputs for n in out.get_names()}
        extra = [t for t in self.tensors.values() if t not in outputs]
        if extra:
            model.add_outputs(extra)
        self.compiled = openvino_compile(model, core=core)

    def check(self, config, weights_name: str = "weights") -> None:
        """Nothing to check before running: OpenVINO reports a wrong input shape when it runs."""

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        try:
            result = self.compiled(np.ascontiguousarray(x, dtype=np.float32))
        except Exception as e:
            raise BackendError(f"{self.path}: OpenVINO failed on input {x.shape}: "
                               f"{str(e).strip().splitlines()[0]}") from None
        by_name = {n: result[out] for out in self.compiled.outputs for n in out.get_names()}
        return {tap: np.asarray(by_name[t]) for tap, t in self.tensors.items()}
