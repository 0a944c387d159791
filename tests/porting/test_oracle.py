"""refpose as an oracle (refpose/oracle.py, refpose/testing.py, `refpose oracle`).

Expected values are worked by hand (tap errors of small arrays), come from what the test
itself did (which weight tensor it perturbed names the stage that must diverge), or from an
independent implementation (the PyTorch twin in float64 checks the golden file).
Tolerances, relative to max|ref| (derived in refpose.porting.oracle): float32 1e-4, float64 2e-13;
both are 30-70x the errors measured for the twin and ONNX Runtime on seeded weights.
"""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest

import refpose
from refpose.cli import main
from refpose.errors import BackendError, DataError
from refpose.porting.oracle import TOLERANCES, compare, dump, load_dump, tap_error, tolerance
from refpose.testing import assert_matches_reference, load_golden, make_inputs, reference_outputs

TAPS = ["stem", "s1", "s2", "s3", "s4", "d1", "d2", "d3", "head"]


# --- the error of one tap, by hand -------------------------------------------------------------
def test_tap_error_by_hand():
    ref = np.array([[[[1.0, -4.0], [2.0, 0.0]]]])             # (1, 1, 2, 2); max|ref| = 4
    got = ref + np.array([[[[0.0, 0.0], [0.0, -0.2]]]])
    e = tap_error("s1", got, ref)
    assert e.abs_err == pytest.approx(0.2, rel=1e-12)         # float64 rounding of 0 - 0.2 only
    assert e.rel_err == pytest.approx(0.05, rel=1e-12)
    assert e.index == (0, 0, 1, 1)
    assert (e.got, e.ref) == (pytest.approx(-0.2), 0.0)
    assert e.within(0.05 + 1e-12) and not e.within(0.049)


def test_a_nan_is_the_largest_error():
    ref = np.ones((1, 2, 2, 2))
    got = ref.copy()
    got[0, 1, 0, 1] = np.nan
    e = tap_error("d2", got, ref)
    assert e.rel_err == np.inf and e.index == (0, 1, 0, 1)


def test_shape_mismatch_is_an_assertion_naming_the_tap():
    with pytest.raises(AssertionError, match=r"s4.*\(1, 2, 3, 3\).*\(1, 2, 3, 4\)"):
        tap_error("s4", np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 4)))


def test_compare_names_the_first_tap_beyond_tolerance():
    ref = {k: np.full((1, 1, 2, 2), 10.0) for k in TAPS}
    rel = dict(stem=1e-6, s1=2e-6, s2=1e-6, s3=1e-6, s4=3e-3, d1=1e-6, d2=5e-3, d3=1e-3, head=2e-3)
    got = {("heatmaps" if k == "head" else k): ref[k] + 10.0 * rel[k] * np.eye(2)[None, None] for k in TAPS}
    result = compare(got, ref, rtol=1e-4)
    assert not result.passed
    assert result.first_divergent.name == "s4"               # d1 is fine again, but s4 came first
    assert result.first_divergent.index == (0, 0, 0, 0)
    assert result.output.rel_err == pytest.approx(2e-3)
    text = "\n".join(result.lines())
    assert "first diverging tap: s4" in text and "[0, 0, 0, 0]" in text
    assert compare(got, ref, rtol=1e-2).passed                # every tap within 1e-2


def test_compare_without_taps_says_so():
    ref = {k: np.ones((1, 1, 1, 1)) for k in TAPS}
    result = compare(ref["head"] * 1.5, ref, rtol=1e-4)      # the heatmaps array alone
    assert not result.passed and result.first_divergent is None
    assert "--taps" in "\n".join(result.lines())


def test_tolerances_are_stated_per_dtype():
    # refpose.porting.oracle: 4·sqrt(L)·sqrt(K)·u with sqrt(L)·sqrt(K) ~ 440 for wgnet, rounded
    assert tolerance("float32") == TOLERANCES["float32"] == 1e-4
    assert tolerance(np.float64) == TOLERANCES["float64"] == 2e-13
    for dtype, u in (("float32", 2.0 ** -24), ("float64", 2.0 ** -53)):
        assert 0.5 < tolerance(dtype) / (4 * 440 * u) < 2
    with pytest.raises(BackendError, match="float16"):
        tolerance("float16")


def test_inputs_are_seeded_and_exact_in_float32():
    x = make_inputs("tiny", 3, seed=7)
    assert x.shape == (3, 3, 128, 96) and x.dtype == np.float64
    assert np.array_equal(x.astype(np.float32).astype(np.float64), x)
    assert np.array_equal(make_inputs("tiny", 3, seed=7), x)
    assert not np.array_equal(make_inputs("tiny", 3, seed=8), x)
    assert 0.9 < x.std() < 1.1                               # standard normal, like a normalised image


# --- the twin through the pytest helpers ---------------------------------------------------------
def twin_taps(tensors, config, x, dtype):
    torch = pytest.importorskip("torch", reason="the PyTorch twin needs torch")
    from refpose.porting.onnx_export import twin_from_weights

    model = twin_from_weights(tensors, config, dtype)
    with torch.no_grad():
        taps = model.forward_taps(torch.from_numpy(x.astype(dtype)))
    return {k: v.numpy() for k, v in taps.items()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_twin_matches_the_reference(tiny_tensors, dtype):
    x = make_inputs("tiny", 2, seed=3)
    ref = reference_outputs(tiny_tensors, x, "tiny")
    assert_matches_reference(twin_taps(tiny_tensors, "tiny", x, dtype), ref, dtype=dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_twin_matches_the_reference_wgnet(dtype):
    tensors = refpose.init_weights("wgnet", seed=1)
    x = make_inputs("wgnet", 1, seed=3)
    assert_matches_reference(twin_taps(tensors, "wgnet", x, dtype), reference_outputs(tensors, x, "wgnet"),
                             dtype=dtype)


@pytest.mark.parametrize("key, stage", [
    ("stem.1.pw.conv.weight", "stem"),
    ("s3.blocks.0.ffn.project.conv.weight", "s3"),
    ("s4.blocks.0.win.qkv.weight", "s4"),
    ("d2.se.fc1.weight", "d2"),
    ("head.bias", "head"),
])
def test_a_perturbed_layer_is_named(tiny_tensors, key, stage):
    broken = dict(tiny_tensors)
    broken[key] = tiny_tensors[key] * 1.5 + 0.01             # one tensor of one stage
    x = make_inputs("tiny", 2, seed=0)
    ref = reference_outputs(tiny_tensors, x, "tiny")
    with pytest.raises(AssertionError, match=rf"first diverging tap: {stage} "):
        assert_matches_reference(twin_taps(broken, "tiny", x, "float32"), ref)


def test_the_float32_tolerance_catches_a_wrong_batchnorm_eps(tiny_tensors):
    # BN eps 1e-4 instead of 1e-5 (DESIGN section 1) moves the output by ~5e-4: caught, and the
    # first BatchNorm of the network is in the stem
    torch = pytest.importorskip("torch", reason="the PyTorch twin needs torch")
    from refpose.porting.onnx_export import twin_from_weights

    model = twin_from_weights(tiny_tensors, "tiny")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-4
    x = make_inputs("tiny", 2, seed=0)
    with torch.no_grad():
        out = {k: v.numpy() for k, v in model.forward_taps(torch.from_numpy(x.astype(np.float32))).items()}
    with pytest.raises(AssertionError, match="first diverging tap: stem "):
        assert_matches_reference(out, reference_outputs(tiny_tensors, x, "tiny"))


# --- golden files ----------------------------------------------------------------------------
@pytest.fixture
def tiny_file(tmp_path, tiny_tensors):
    path = tmp_path / "tiny.safetensors"
    refpose.save_weights(path, tiny_tensors, "tiny", trained=False)
    return path


def test_dump_round_trips(tmp_path, tiny_file, tiny_tensors):
    out = tmp_path / "golden.npz"
    dump(tiny_file, out, n=2, seed=4)
    with np.load(out, allow_pickle=False) as z:
        keys = set(z.files)
        assert all(z[k].dtype == np.float64 for k in ["input", "heatmaps"] + TAPS[:-1])
    assert keys == {"input", "stem", "s1", "s2", "s3", "s4", "d1", "d2", "d3", "heatmaps",
                    "config", "format", "seed"}
    golden = load_golden(out)
    assert golden.config.name == "tiny" and golden.seed == 4
    assert golden.inputs.shape == (2, 3, 128, 96)
    assert np.array_equal(golden.inputs.astype(np.float32).astype(np.float64), golden.inputs)
    again = reference_outputs(tiny_file, golden.inputs)      # load it back, recompute: equal
    for k in TAPS:
        assert np.array_equal(again[k], golden.taps[k]), k
    # and an independent implementation agrees with the file
    assert_matches_reference(twin_taps(tiny_tensors, "tiny", golden.inputs, "float64"), golden, dtype="float64")


def test_cli_dump(tmp_path, tiny_file, capsys):
    out = tmp_path / "g.npz"
    assert main(["oracle", "--seed", "3", "dump", str(tiny_file), str(out), "--inputs", "1"]) == 0
    golden = load_dump(out)
    assert golden.seed == 3 and len(golden.inputs) == 1      # --seed before `dump` is kept
    assert main(["oracle", "dump", str(tmp_path / "nope.safetensors"), str(tmp_path / "h.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.safetensors" in err
    assert not (tmp_path / "h.npz").exists()


def test_load_dump_rejects_other_files(tmp_path, tiny_file):
    with pytest.raises(DataError, match="no such"):
        load_dump(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(DataError, match="not a refpose golden file"):
        load_dump(tmp_path / "other.npz")
    with pytest.raises(DataError, match="not a readable"):
        load_dump(tiny_file)
    import os

    os.mkfifo(tmp_path / "fifo.npz")
    with pytest.raises(DataError, match=r"fifo.npz: a named pipe \(FIFO\), not a regular file"):
        load_dump(tmp_path / "fifo.npz")


def test_a_golden_file_that_unpacks_beyond_the_limit_is_refused_before_unpacking(tmp_path, monkeypatch):
    """A compressed .npz is a zip bomb (~1000x smaller on disk than in memory): bounded as weights are."""
    import refpose.porting.oracle as oracle_module

    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, input=np.zeros(10 ** 6, np.float32))       # 4 MB unpacked, a few KB packed
    monkeypatch.setattr(oracle_module, "MAX_GOLDEN_BYTES", 10 ** 6)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("unpacked"))
    with pytest.raises(DataError, match=r"bomb.npz: unpacks to 4,000,\d+ bytes, more than the 1,000,000"):
        load_dump(path)


# --- `refpose oracle --onnx` -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory, tiny_tensors):
    """A good tiny export with taps, and exports with and without taps of weights with s3 broken."""
    pytest.importorskip("torch", reason="ONNX export traces the PyTorch twin")
    pytest.importorskip("onnxruntime", reason="the oracle runs ONNX files with ONNX Runtime")
    from refpose.porting.onnx_export import export_onnx

    d = tmp_path_factory.mktemp("oracle")
    weights = d / "tiny.safetensors"
    refpose.save_weights(weights, tiny_tensors, "tiny", trained=False)
    broken = dict(tiny_tensors)
    broken["s3.blocks.0.ffn.project.conv.weight"] = broken["s3.blocks.0.ffn.project.conv.weight"] * 1.5
    files = {"weights": weights, "good": d / "good.onnx", "broken": d / "broken.onnx",
             "broken-plain": d / "broken_plain.onnx"}
    export_onnx(tiny_tensors, "tiny", files["good"], taps=True)
    export_onnx(broken, "tiny", files["broken"], taps=True)
    export_onnx(broken, "tiny", files["broken-plain"], taps=False)
    return files


def oracle(capsys, *argv):
    status = main(["oracle", *map(str, argv)])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_oracle_passes_on_the_exported_twin(onnx_files, capsys):
    status, out, err = oracle(capsys, "--onnx", onnx_files["good"], "--weights", onnx_files["weights"])
    assert status == 0, out + err
    assert "within tolerance" in out and "max abs error" in out


def verdicts(out: str) -> dict[str, str]:
    """{tap: "ok" | "DIVERGES"} from the oracle's table."""
    return {line.split()[0]: line.split()[2] for line in out.splitlines()
            if line.startswith("  ") and len(line.split()) > 2}


@pytest.mark.parametrize("export", ["broken", "broken-plain"])     # with and without --taps
def test_oracle_names_the_broken_stage(onnx_files, capsys, export):
    status, out, _ = oracle(capsys, "--onnx", onnx_files[export], "--weights", onnx_files["weights"],
                            "--inputs", "1", "--seed", "2")
    assert status == 1
    assert "first diverging tap: s3 " in out
    verdict = verdicts(out)
    assert [verdict[k] for k in ("stem", "s1", "s2", "s3")] == ["ok", "ok", "ok", "DIVERGES"]


def test_export_without_taps_names_the_stage_tensors_inside(onnx_files):
    onnx = pytest.importorskip("onnx", reason="reading ONNX files needs the onnx package")
    graph = onnx.load(str(onnx_files["broken-plain"])).graph
    assert [o.name for o in graph.output] == ["heatmaps"]
    produced = [t for node in graph.node for t in node.output]
    for stage in ("stem", "s1", "s2", "s3", "s4", "d1", "d2", "d3"):
        assert produced.count(stage) == 1, stage


def renamed(src, dst, names: dict[str, str]):
    """A copy of an ONNX file with tensors renamed (as another exporter would name them)."""
    onnx = pytest.importorskip("onnx", reason="editing ONNX files needs the onnx package")
    model = onnx.load(str(src))
    for node in model.graph.node:
        node.input[:] = [names.get(t, t) for t in node.input]
        node.output[:] = [names.get(t, t) for t in node.output]
    for info in list(model.graph.output) + list(model.graph.value_info):
        info.name = names.get(info.name, info.name)
    onnx.save(model, str(dst))
    return dst


def test_tap_maps_another_models_tensors(onnx_files, tmp_path, capsys):
    names = {"s2": "encoder/layer2/out", "s3": "encoder/layer3/out", "heatmaps": "logits"}
    model = renamed(onnx_files["broken-plain"], tmp_path / "theirs.onnx", names)
    base = ("--onnx", model, "--weights", onnx_files["weights"], "--inputs", "1")
    status, out, err = oracle(capsys, *base)                 # no output named heatmaps
    assert status == 2 and "no output named 'heatmaps'" in err and "--tap heatmaps=" in err
    status, out, _ = oracle(capsys, *base, "--tap", "heatmaps=logits")
    assert status == 1 and "first diverging tap: s4 " in out   # s2 and s3 are not found by name
    assert "not given by the backend: s2, s3" in out
    status, out, _ = oracle(capsys, *base, "--tap", "heatmaps=logits", "--tap", "s3=encoder/layer3/out",
                            "--tap", "s2=encoder/layer2/out")
    assert status == 1 and "first diverging tap: s3 " in out and "s2 agrees" in out
    assert verdicts(out)["s2"] == "ok"


@pytest.mark.parametrize("tap, pattern", [
    ("s9=x", r"--tap s9=\.\.\.: not a stage"),
    ("s3=no/such/tensor", r"no tensor named 'no/such/tensor'"),
])
def test_bad_tap_mapping(onnx_files, capsys, tap, pattern):
    status, out, err = oracle(capsys, "--onnx", onnx_files["good"], "--weights", onnx_files["weights"], "--tap", tap)
    assert status == 2 and out == "" and err.count("\n") == 1
    assert re.search(pattern, err), err
    status, _, err = oracle(capsys, "--onnx", onnx_files["good"], "--weights", onnx_files["weights"],
                            "--tap", "s3")                   # no '='
    assert status == 2 and "expected NAME=TENSOR" in err and err.count("\n") == 1


def test_oracle_rtol_option(onnx_files, capsys):
    # the s3 defect moves the heatmaps by ~0.2 of their scale; a tolerance of 10 lets it through
    status, _, _ = oracle(capsys, "--onnx", onnx_files["broken"], "--weights", onnx_files["weights"], "--rtol", "10")
    assert status == 0


# --- bad input: one line on stderr, exit status 2 -------------------------------------------------
def tiny_graph(path, input_name="input", input_shape=("N", 3, 128, 96), config=None):
    """A one-node ONNX file (Identity) with the given input; output 'heatmaps' of unknown shape."""
    onnx = pytest.importorskip("onnx", reason="building ONNX files needs the onnx package")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], ["heatmaps"])], "g",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if config is not None:
        helper.set_model_props(model, {"refpose.config": refpose.get_config(config).to_json()})
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("case, pattern", [
    ("input_name", r"inputs are 'x'; expected one input named 'input'"),
    ("input_shape", r"'input' has shape \('N', 3, 256, 192\), but config 'tiny' needs \('N', 3, 128, 96\)"),
    ("config", r"tiny\.safetensors: weights for config 'tiny', but .* exported for config 'wgnet'"),
    ("garbage", r"not a loadable ONNX model"),
    ("missing", r"no such ONNX file"),
    ("fifo", r"model.onnx: a named pipe \(FIFO\), not a regular file"),     # was a hang, then "no such file"
])
def test_bad_onnx_files(tmp_path, tiny_file, capsys, case, pattern):
    pytest.importorskip("onnxruntime", reason="the oracle runs ONNX files with ONNX Runtime")
    path = tmp_path / "model.onnx"
    if case == "input_name":
        tiny_graph(path, input_name="x")
    elif case == "input_shape":
        tiny_graph(path, input_shape=("N", 3, 256, 192))
    elif case == "config":
        tiny_graph(path, config="wgnet")
    elif case == "garbage":
        path.write_bytes(b"not a protobuf at all")
    elif case == "fifo":
        import os

        os.mkfifo(path)
    status, out, err = oracle(capsys, "--onnx", path, "--weights", tiny_file)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("refpose oracle: error: ")
    assert re.search(pattern, err), err


def test_missing_onnxruntime_is_one_line(tmp_path, tiny_file, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)     # `import onnxruntime` now fails
    status, out, err = oracle(capsys, "--onnx", tiny_graph(tmp_path / "m.onnx"), "--weights", tiny_file)
    assert status == 2 and "onnxruntime is not installed" in err and err.count("\n") == 1


def test_oracle_needs_onnx_and_weights(capsys):
    with pytest.raises(SystemExit) as e:
        main(["oracle", "--onnx", "m.onnx"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--weights" in err and "oracle dump" in err


def test_help_explains_both_forms(capsys):
    with pytest.raises(SystemExit):
        main(["oracle", "--help"])
    text = capsys.readouterr().out
    assert "refpose oracle --onnx MODEL.onnx --weights WEIGHTS" in text
    assert "refpose oracle dump WEIGHTS OUT.npz" in text
    with pytest.raises(SystemExit):
        main(["oracle", "dump", "--help"])
    text = capsys.readouterr().out
    assert all(k in text for k in ("input", "stem", "s1 s2 s3 s4", "d1 d2 d3", "heatmaps", "config"))
