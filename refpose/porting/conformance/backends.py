"""The backends the conformance suite checks, each behind one small interface.

A backend has a `name`, the `dtype` it takes its input in, `check(config)` (raises when it
cannot run that config) and `run(x)`, which maps inputs (N, 3, H, W) to {tap: array}: the
heatmaps as "head" and whichever stage outputs (stem, s1..s4, d1..d3) it exposes.

    onnx:MODEL.onnx              ONNX Runtime (refpose.porting.runtimes.OnnxBackend, stage tensors exposed)
    openvino:MODEL.onnx|xml      OpenVINO on the CPU, float32 inference; the same stage tensors
    python:package.module:factory  factory(weights, config) (or factory()) returns a callable that
                                 maps float32 NCHW to heatmaps or to {stem, s1..d3, heatmaps}
"""
from __future__ import annotations

import importlib
import inspect

import numpy as np

from ...config import get_config
from ...errors import BackendError
from ..oracle import as_taps
from ..runtimes import OnnxBackend, OpenVinoBackend

KINDS = ("onnx", "openvino", "python")


def parse_spec(spec: str, taps: "dict[str, str] | None" = None) -> tuple[str, str]:
    """--refpose-backend SPEC -> (kind, target); BackendError when it is not one of the forms."""
    kind, sep, target = spec.partition(":")
    if not sep or kind not in KINDS or not target:
        raise BackendError(f"backend {spec!r}: expected onnx:MODEL.onnx, openvino:MODEL.onnx|xml or "
                           "python:package.module:factory")
    if taps and kind == "python":
        raise BackendError("--refpose-tap maps the tensors of a model file; a python backend names its "
                           "stages in the dict it returns")
    return kind, target


def open_backend(spec: str, weights: str, config, taps: "dict[str, str] | None" = None):
    """The backend a --refpose-backend SPEC names, for these weights (a file) and config."""
    kind, target = parse_spec(spec, taps)
    if kind == "onnx":
        return OnnxBackend(target, taps)
    if kind == "openvino":
        return OpenVinoBackend(target, taps)
    return PythonBackend(target, weights, get_config(config).name)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class PythonBackend:
    """A port in Python: `package.module:factory`, called as factory(weights, config) when it
    takes parameters, else factory(); it returns the callable the suite runs on float32 NCHW."""

    dtype = np.dtype(np.float32)

    def __init__(self, target: str, weights: str, config_name: str):
        module_name, sep, attr = target.rpartition(":")
        if not sep or not module_name or not attr:
            raise BackendError(f"python:{target}: expected python:package.module:factory")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise BackendError(f"python:{target}: cannot import {module_name!r} ({e})") from None
        except Exception as e:                    # the port's own code failed while importing
            raise BackendError(f"python:{target}: importing {module_name!r} raised {_first_line(e)}") from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise BackendError(f"python:{target}: {module_name} has no callable {attr!r}")
        try:
            takes_args = bool(inspect.signature(factory).parameters)
        except (TypeError, ValueError):           # a builtin or a callable without a signature
            takes_args = False
        try:
            self.fn = factory(weights, config_name) if takes_args else factory()
        except Exception as e:                    # the port's factory failed
            raise BackendError(f"python:{target}: the factory raised {_first_line(e)}") from None
        if not callable(self.fn):
            raise BackendError(f"python:{target}: the factory returned {type(self.fn).__name__}, not a callable")
        self.name = f"python:{target}"

    def check(self, config, weights_name: str = "weights") -> None:
        """A port takes the weights it was given; nothing to check before running."""

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        try:
            outputs = self.fn(np.ascontiguousarray(x, dtype=np.float32))
        except Exception as e:                    # the port failed on this input: its case fails, in one line
            raise BackendError(f"{self.name} raised {_first_line(e)} on input {x.shape}") from None
        return as_taps(outputs)
