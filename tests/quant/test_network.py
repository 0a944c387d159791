"""The int8 network: its walk against the float model, the fast path against the oracle bit for
bit, the int8 file (keys, strict loading, bad input), refpose.load and the driver."""
import json
import os

import numpy as np
import pytest

import refpose
from refpose.cli import main
from refpose.errors import InputShapeError, WeightsError
from refpose.quant.network import Float, QTensor, Walk, float_weights
from refpose.quant.quantize import quantize_tensors, save_int8
from refpose.weights import read_weights


def inputs(n, seed=0):
    return (0.8 * np.random.default_rng(seed).standard_normal((n, 3, 128, 96))).astype(np.float32)


def test_the_walk_is_the_float_network():
    """The float arithmetic through the int8 network's walk gives the taps of refpose's float64
    reference (so the int8 network is quantized at the right places of the right network)."""
    model = refpose.load("tiny-synthetic", dtype="float64", impl="reference")
    x = inputs(2).astype(np.float64)
    ref = model.taps(x)
    a = Float(float_weights(model), "float64")
    out = Walk(model.config).run(lambda stage: a, x.transpose(0, 2, 3, 1))
    for k, v in ref.items():
        np.testing.assert_allclose(out[k].transpose(0, 3, 1, 2), v, rtol=0, atol=1e-12 * np.abs(v).max())


@pytest.mark.parametrize("batch", [1, 3])
def test_fast_path_gives_the_oracles_integers(int8_file, batch):
    ref = refpose.load(int8_file, impl="reference").run(inputs(batch, batch))
    fast = refpose.load(int8_file, impl="fast").run(inputs(batch, batch))
    for k, v in ref.items():
        if isinstance(v, QTensor):
            assert np.array_equal(fast[k].q, v.q), k
        else:
            assert np.array_equal(fast[k], v), k


def test_an_image_gives_the_same_integers_in_any_batch(int8_file):
    model = refpose.load(int8_file)
    x = inputs(3, 5)
    assert np.array_equal(model(x)[1:2], model(x[1:2]))


def test_float_stages_run_in_float_and_load_without_the_float_file(int8_file, tmp_path):
    wf = read_weights(int8_file)
    model = refpose.load("tiny-synthetic", impl="reference")
    ranges = {k[:-len(".y_scale")]: (0.0, 1.0) for k in wf.tensors if k.endswith(".y_scale")}
    tensors = quantize_tensors(model, ranges, float_stages=("s2", "head"))
    assert wf.tensors.keys() != tensors.keys() and tensors["s2.ir.expand.weight"].dtype == np.float32
    path = str(tmp_path / "mixed.int8.safetensors")
    save_int8(path, tensors, "tiny", float_stages=("s2", "head"))
    m = refpose.load(path, impl="reference")
    assert m.float_stages == ("s2", "head")
    out = m.run(inputs(1))
    assert isinstance(out["s1"], QTensor) and not isinstance(out["s2"], QTensor) and out["head"].dtype == np.float32
    fast = refpose.load(path).run(inputs(1))
    assert np.array_equal(fast["d3"].q, out["d3"].q) and np.array_equal(fast["head"], out["head"])


def test_keys_are_documented_names(int8_file):
    t = read_weights(int8_file).tensors
    assert t["s1.ir.expand.weight"].dtype == np.int8 and t["s1.ir.expand.weight_scale"].shape == (96,)
    assert t["s1.ir.expand.bias"].dtype == np.int32
    assert t["input.y_scale"].shape == () and t["input.y_zero_point"].dtype == np.uint8
    for name in ("s1.blocks.0.win.norm", "s1.blocks.0.win.qkv", "s1.blocks.0.win.scores", "s1.blocks.0.win.attn",
                 "s1.blocks.0.win", "s1.blocks.0.ffn", "d2.sum", "d2.se.pool", "d2.se.fc1", "d2.se"):
        assert f"{name}.y_scale" in t, name
    assert t["d1.up.weight_scale"].shape == (64,)                 # transposed: per output channel (axis 1)
    assert "head.y_scale" not in t and t["head.weight"].shape == (17, 32, 1, 1)
    assert (np.abs(t["s1.ir.expand.weight"].astype(int)).max(axis=(1, 2, 3)) == 127).all()


def test_quantizing_is_deterministic(int8_file, calib_dir, tmp_path):
    from refpose.quant.quantize import quantize_file

    again = str(tmp_path / "again.safetensors")
    quantize_file("tiny-synthetic", calib_dir, again, method="minmax")
    assert open(again, "rb").read() == open(int8_file, "rb").read()


def spoiled(int8_file, tmp_path, key, value):
    wf = read_weights(int8_file)
    tensors = dict(wf.tensors)
    tensors[key] = value
    path = str(tmp_path / "bad.int8.safetensors")
    save_int8(path, tensors, "tiny")
    return path


@pytest.mark.parametrize("key,value,match", [
    ("s1.ir.expand.y_scale", np.array(0.0, np.float32), "positive"),
    ("s1.ir.expand.y_scale", np.array(np.nan, np.float32), "non-finite"),
    ("s2.ir.dw.weight_scale", -np.ones(192, np.float32), "positive"),
    ("input.y_zero_point", np.array(300, np.int32), "dtype int32, expected uint8"),
])
def test_bad_int8_files_are_refused(int8_file, tmp_path, key, value, match, capsys):
    path = spoiled(int8_file, tmp_path, key, value)
    with pytest.raises(WeightsError, match=match):
        refpose.load(path)
    code = main(["eval", "--ann", "tests/assets/synth_heldout/annotations.json", "--images",
                 "tests/assets/synth_heldout/images", "--weights", path, "--limit", "1",
                 "--results-out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match.split()[0] in err[0]


def test_quantize_bad_input_one_line_exit_2(int8_file, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no image here")
    out = str(tmp_path / "o.safetensors")
    cases = [(["quantize", "tiny-synthetic", "--calib", str(empty), "--out", out], "no image files"),
             (["quantize", int8_file, "--calib", str(empty), "--out", out], "int8 weights file"),
             (["quantize", "tiny-synthetic", "--calib", str(empty), "--float-stages", "s9", "--out", out], "not a stage")]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not os.path.exists(out)


def test_nan_input_is_refused(int8_file):
    x = inputs(1)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(InputShapeError, match="NaN"):
        refpose.load(int8_file)(x)


def test_infer_runs_the_int8_file(int8_file, tmp_path):
    out = tmp_path / "out"
    code = main(["infer", "tests/assets/synth_heldout/images/000001.jpg", "--weights", int8_file, "--out", str(out)])
    assert code == 0
    records = json.loads((out / "000001.pose.json").read_text())
    assert records and len(records[0]["keypoints"]) == 51
