"""pytest options of the conformance suite (`pytest --pyargs refpose.conformance`).

Registered through the `pytest11` entry point. Every pytest run in an environment with refpose
loads this module, so it imports nothing at load time and does nothing unless one of its
options is given; the suite (refpose.porting.conformance.suite) is built in `pytest_configure` then.
"""
from __future__ import annotations

import pytest

SUITE = pytest.StashKey()
OPTIONS = ("backend", "weights", "config", "precision", "tap", "golden", "outputs")


def pytest_addoption(parser):
    group = parser.getgroup("refpose conformance", "refpose conformance suite (pytest --pyargs refpose.conformance)")
    group.addoption("--refpose-backend", metavar="SPEC",
                    help="the port to check: onnx:MODEL.onnx (ONNX Runtime), openvino:MODEL.onnx|xml, or "
                         "python:package.module:factory (factory(weights, config) or factory() returns a "
                         "callable: float32 NCHW -> heatmaps, or a dict of stem, s1..d3, heatmaps)")
    group.addoption("--refpose-weights", metavar="FILE",
                    help="the weights both sides compute with (a file, or the name of shipped weights such "
                         "as tiny-synthetic); when FILE does not exist, seeded untrained weights of "
                         "--refpose-config are written there")
    group.addoption("--refpose-config", metavar="NAME",
                    help="the config (default: the weights file's own, else every named config it fits)")
    group.addoption("--refpose-precision", choices=("fp16", "int8"),
                    help="check a float16 or int8 port at the looser tolerance stated for it "
                         "(default: the backend's input dtype, float32 at 1e-4)")
    group.addoption("--refpose-tap", action="append", default=[], metavar="NAME=TENSOR",
                    help="the model's tensor TENSOR is our stage NAME (stem, s1..s4, d1..d3, heatmaps); repeatable")
    group.addoption("--refpose-golden", metavar="GOLDEN.npz",
                    help="for a port without Python: the file `refpose oracle dump` wrote ...")
    group.addoption("--refpose-outputs", metavar="THEIRS.npz",
                    help="... and the port's outputs on its inputs (heatmaps and any of stem, s1..d3)")


def pytest_configure(config):
    values = {name: config.getoption(f"--refpose-{name}") for name in OPTIONS}
    if not any(values.values()):
        return
    from ...errors import RefposeError
    from ..runtimes import parse_taps
    from .suite import build_suite

    try:
        values["taps"] = parse_taps(values.pop("tap"))
        config.stash[SUITE] = build_suite(**values)
    except RefposeError as e:
        raise pytest.UsageError(f"refpose conformance: {e}") from None


def pytest_report_header(config):
    suite = config.stash.get(SUITE, None)
    if suite is None:
        return None
    rtol, reason = suite.rtol
    source = (", ".join(f"{name}: {b.name}" for name, b in suite.backends.items()) if suite.backends
              else "golden files")
    against = "refpose's int8 oracle" if getattr(suite, "int8", None) is not None else "refpose float64"
    return [f"refpose conformance: {source}; reference {against} on {suite.weights or 'the golden file'}",
            f"refpose conformance: precision {suite.precision}, tolerance {rtol:g} (max|got - ref| / max|ref|): {reason}"]
