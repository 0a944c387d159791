"""ONNX export through the PyTorch twin (refpose/onnx_export.py) and ONNX Runtime parity.

Expected shapes are the tiny config's maps written out by hand from DESIGN section 1 (input
128x96, stem stride 4, s2..s4 halve, d1..d3 double back); numbers are compared with refpose
float64 on the plain NumPy ops, an implementation independent of the twin the export traces.
Tolerance: float32 1e-4 relative to max|ref| (refpose.porting.oracle derives it from float32 rounding,
~440 u over wgnet's depth and width, times 4; ORT measures ~1e-6 on these weights).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="ONNX export traces the PyTorch twin, which needs torch")
onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
ort = pytest.importorskip("onnxruntime", reason="parity is checked with ONNX Runtime")

import refpose  # noqa: E402
from refpose.cli import main  # noqa: E402
from refpose.errors import BackendError, WeightsError  # noqa: E402
from refpose.porting.onnx_export import export_onnx  # noqa: E402
from refpose.testing import assert_matches_reference, make_inputs, reference_outputs  # noqa: E402

# tiny config (DESIGN "tiny", refpose/config.py): channels and maps at 128x96, by hand
TINY_SHAPES = {"heatmaps": (17, 32, 24), "stem": (16, 32, 24), "s1": (32, 32, 24), "s2": (64, 16, 12),
               "s3": (64, 8, 6), "s4": (96, 4, 3), "d1": (64, 8, 6), "d2": (32, 16, 12), "d3": (32, 32, 24)}
TAP_NAMES = ["stem", "s1", "s2", "s3", "s4", "d1", "d2", "d3"]


def session(path):
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(path, x):
    s = session(path)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, {"input": x.astype(np.float32)})))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, tiny_tensors):
    path = tmp_path_factory.mktemp("onnx") / "tiny_taps.onnx"
    export_onnx(tiny_tensors, "tiny", path, taps=True)
    return path


def test_export_has_the_interface_of_design(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    (inp,) = model.graph.input
    assert inp.name == "input"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 128, 96]   # dynamic batch
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    outputs = {o.name: o for o in model.graph.output}
    assert list(outputs) == ["heatmaps"] + TAP_NAMES
    for name, shape in TINY_SHAPES.items():
        dims = outputs[name].type.tensor_type.shape.dim
        assert dims[0].dim_param and tuple(d.dim_value for d in dims[1:]) == shape, name
    meta = {p.key: p.value for p in model.metadata_props}
    assert refpose.get_config(json.loads(meta["refpose.config"])).name == "tiny"


@pytest.mark.parametrize("batch", [1, 3])
def test_ort_matches_refpose_float64_tiny(tiny_onnx, tiny_tensors, batch):
    # batch 1 and 3 differ from the batch of 2 that was traced: the batch is really dynamic
    x = make_inputs("tiny", batch, seed=5)
    out = run(tiny_onnx, x)
    assert {k: v.shape[1:] for k, v in out.items()} == TINY_SHAPES
    assert all(v.shape[0] == batch for v in out.values())
    assert_matches_reference(out, reference_outputs(tiny_tensors, x, "tiny"), dtype="float32")


@pytest.mark.slow
def test_ort_matches_refpose_float64_wgnet(tmp_path):
    tensors = refpose.init_weights("wgnet", seed=3)
    path = tmp_path / "wgnet.onnx"
    export_onnx(tensors, "wgnet", path, taps=True)
    x = make_inputs("wgnet", 2, seed=1)
    out = run(path, x)
    assert out["heatmaps"].shape == (2, 17, 64, 48)                       # DESIGN: 17x64x48 at 256x192
    assert_matches_reference(out, reference_outputs(tensors, x, "wgnet"), dtype="float32")


def test_the_first_supported_opset_exports_and_agrees(tmp_path, tiny_tensors):
    # 13 has no LayerNormalization node (the exporter decomposes it); 20, the last, is in
    # test_cli_export_onnx
    path = tmp_path / "tiny13.onnx"
    export_onnx(tiny_tensors, "tiny", path, opset=13)
    assert onnx.load(str(path)).opset_import[0].version == 13
    x = make_inputs("tiny", 1, seed=4)
    assert_matches_reference(run(path, x)["heatmaps"], reference_outputs(tiny_tensors, x, "tiny"))


def test_export_failures_leave_no_file(tmp_path, tiny_tensors):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old")
    with pytest.raises(BackendError, match="opset 12"):
        export_onnx(tiny_tensors, "tiny", out, opset=12)
    broken = {k: v for k, v in tiny_tensors.items() if k != "s3.ir.dw.bn.running_var"}
    with pytest.raises(WeightsError, match=r"s3\.ir\.dw\.bn\.running_var"):
        export_onnx(broken, "tiny", out)
    with pytest.raises(WeightsError, match="config"):
        export_onnx(tiny_tensors, None, out)                                # a dict needs its config
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]    # no temp file left


def test_export_rejects_weights_of_another_config(tmp_path, tiny_tensors):
    weights = tmp_path / "tiny.safetensors"
    refpose.save_weights(weights, tiny_tensors, "tiny", trained=False)
    with pytest.raises(WeightsError, match="'tiny', not 'wgnet'"):
        export_onnx(weights, "wgnet", tmp_path / "x.onnx")


def test_cli_export_onnx(tmp_path, tiny_tensors, capsys):
    # from a weights file that carries its config, without taps, at the last supported opset
    weights = tmp_path / "tiny.safetensors"
    refpose.save_weights(weights, tiny_tensors, "tiny", trained=False)
    out = tmp_path / "tiny.onnx"
    assert main(["export-onnx", str(weights), str(out), "--opset", "20"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert onnx.load(str(out)).opset_import[0].version == 20
    x = make_inputs("tiny", 2, seed=2)
    result = run(out, x)
    assert list(result) == ["heatmaps"]
    assert_matches_reference(result["heatmaps"], reference_outputs(weights, x), dtype="float32")

    assert main(["export-onnx", str(tmp_path / "missing.safetensors"), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.safetensors" in err
    assert not (tmp_path / "m.onnx").exists()
