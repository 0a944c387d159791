"""QDQ export -> ONNX Runtime / OpenVINO round trip within the stated tolerance in steps; the
per-stage report names a stage whose quantization was spoiled on purpose."""
import numpy as np
import pytest

import refpose
from refpose.cli import main
from refpose.quant import report
from refpose.quant.quantize import calibration_crops, calibration_images, save_int8
from refpose.weights import read_weights

pytest.importorskip("onnx", reason="the QDQ export needs onnx")


@pytest.fixture(scope="module")
def qdq_model(int8_file, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("qdq") / "tiny.int8.onnx")
    assert main(["export-onnx", int8_file, path]) == 0
    return path


@pytest.fixture(scope="module")
def crops(calib_dir):
    return calibration_crops(calibration_images(calib_dir), refpose.get_config("tiny"))


@pytest.mark.onnx
def test_ort_round_trip_within_tolerance(int8_file, qdq_model, crops):
    """ONNX Runtime running the QDQ graph as written (basic graph optimization) is within 4 sqrt(n)
    steps of refpose's integers at every tap, and most codes are equal."""
    pytest.importorskip("onnxruntime")
    from refpose.porting.runtimes import OnnxBackend

    model = refpose.load(int8_file, impl="reference")
    rows = report.compare_port(OnnxBackend(qdq_model, optimization="basic").run(crops), model, crops)
    assert [r.name for r in rows] == list(refpose.TAPS)
    for r in rows:
        assert r.within, (r.name, r.max_steps, r.tolerance)
        assert np.isnan(r.over_one) or r.over_one < 0.2
    assert rows[0].max_steps < 1e-3          # the stem: no cascade yet, the same codes


@pytest.mark.onnx
def test_openvino_runs_the_qdq_model(int8_file, qdq_model, crops):
    pytest.importorskip("openvino")
    from refpose.porting.runtimes import OpenVinoBackend

    got = OpenVinoBackend(qdq_model).run(crops)
    ref = refpose.load(int8_file, impl="reference")(crops)
    assert got["head"].shape == ref.shape
    assert np.abs(got["head"] - ref).max() < 0.5 * np.abs(ref).max()


def test_report_names_the_spoiled_stage(int8_file, crops, tmp_path):
    tensors = dict(read_weights(int8_file).tensors)
    for k in tensors:
        if k.startswith("s2.") and k.endswith(".y_scale"):
            tensors[k] = np.float32(tensors[k] * 40)        # 40 times coarser steps in s2
    path = str(tmp_path / "spoiled.int8.safetensors")
    save_int8(path, tensors, "tiny")
    model = refpose.load(path, impl="reference")
    float_model = refpose.load("tiny-synthetic", dtype="float64", impl="reference")
    rows, summary = report.stage_report(model, float_model, crops[:3])
    assert summary["worst"] == "s2"
    assert max(rows, key=lambda r: r.share).name == "s2"
    good, _ = report.stage_report(refpose.load(int8_file, impl="reference"), float_model, crops[:3])
    assert {r.name: r for r in rows}["s2"].snr_db < {r.name: r for r in good}["s2"].snr_db - 10


def test_report_refuses_a_float_file_as_int8(capsys, calib_dir):
    code = main(["oracle", "--quant", "tiny-synthetic", "--float", "tiny-synthetic", "--images", calib_dir])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "int8 file is needed" in err[0]


def test_tolerances_grow_with_the_quantizers_before_the_tap(int8_file):
    n = report.quantizers_before(refpose.get_config("tiny"))
    assert n["stem"] == 5                               # input, stem.0.dw, stem.0.pw, stem.1.dw, stem.1.pw
    assert all(n[a] < n[b] for a, b in zip(refpose.TAPS[:-2], refpose.TAPS[1:-1]))
    tol = report.tolerances(refpose.load(int8_file, impl="reference"))
    assert tol["stem"] == pytest.approx(4 * np.sqrt(5))


@pytest.mark.onnx
def test_conformance_suite_checks_an_int8_port_against_the_int8_oracle(int8_file, qdq_model):
    pytest.importorskip("onnxruntime")
    from refpose.porting.conformance.suite import Case, build_suite

    suite = build_suite(backend=f"onnx:{qdq_model}", weights=int8_file)
    assert suite.precision == "int8" and suite.int8 is not None and suite.rtol[0] == 1.0
    case = Case("tiny", "int8", 2, "photo")
    result = suite.comparison(case)
    assert [t.name for t in result.taps] == list(refpose.TAPS)
    assert all(np.isfinite(t.rel_err) for t in result.taps)
