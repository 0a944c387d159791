"""The conformance suite (refpose/conformance): run as a user runs it, in a subprocess, on the
tiny config exported to ONNX (faithful: passes; s3 broken: fails at s3), and its parts in-process.

Expected counts come from the suite's definition, written out here: 3 batch sizes x 6 input
kinds (normal0, normal1, photo, zeros, plus5sigma, minus5sigma) = 18 cases, each checking the
9 taps stem, s1..s4, d1..d3, heatmaps. Which stage must fail comes from which weight the test
perturbed. Tolerances are the oracle's (float32 1e-4; float16 3e-2, where the twin in float16
measures at most 5e-3 on the tiny config).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import refpose
from refpose.porting.conformance.suite import Case, build_suite, case_inputs, configs_allowed
from refpose.errors import BackendError, DataError, WeightsError
from refpose.porting.oracle import dump

CASES = 3 * 6
TAPS = 9
BROKEN_KEY = "s3.blocks.0.ffn.project.conv.weight"     # a layer of s3


def run_suite(cwd, *options) -> tuple[int, str]:
    """`pytest --pyargs refpose.conformance OPTIONS` in a subprocess: (status, output)."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "refpose.conformance", "-q", "-rfs",
           "-p", "no:cacheprovider", *map(str, options)]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def summary(output: str) -> dict[str, int]:
    """{'passed': n, 'failed': n, 'skipped': n} from pytest's last line."""
    last = output.strip().splitlines()[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", last)}


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_tensors):
    """Tiny weights, and ONNX exports *without* --taps of them and of a copy with s3 broken."""
    pytest.importorskip("torch", reason="ONNX export traces the PyTorch twin")
    pytest.importorskip("onnxruntime", reason="the onnx: backend runs ONNX Runtime")
    from refpose.porting.onnx_export import export_onnx

    d = tmp_path_factory.mktemp("conformance")
    refpose.save_weights(d / "tiny.safetensors", tiny_tensors, "tiny", trained=False)
    broken = dict(tiny_tensors)
    broken[BROKEN_KEY] = broken[BROKEN_KEY] * 1.5
    export_onnx(tiny_tensors, "tiny", d / "good.onnx")
    export_onnx(broken, "tiny", d / "broken.onnx")
    return d


# --- the suite as a user runs it -------------------------------------------------------------------
@pytest.mark.onnx
def test_suite_passes_on_the_exported_twin(exports):
    status, out = run_suite(exports, "--refpose-backend", f"onnx:{exports / 'good.onnx'}",
                            "--refpose-weights", exports / "tiny.safetensors")
    print(out.strip().splitlines()[-1])
    assert status == 0, out[-3000:]
    assert summary(out) == {"passed": CASES * TAPS}


@pytest.mark.onnx
def test_suite_names_the_broken_stage(exports):
    status, out = run_suite(exports, "--refpose-backend", f"onnx:{exports / 'broken.onnx'}",
                            "--refpose-weights", exports / "tiny.safetensors")
    print(out.strip().splitlines()[-1])
    assert status == 1
    # every case: stem, s1, s2 agree, s3 fails, the 5 after it are skipped because of s3
    assert summary(out) == {"failed": CASES, "passed": CASES * 3, "skipped": CASES * 5}
    failed = re.findall(r"^FAILED \S+::test_stage\[(\S+)\]", out, re.M)
    assert len(failed) == CASES and all(name.endswith("-s3") for name in failed)
    assert "tiny-fp32-b2-photo-s3" in failed
    assert re.search(r"SKIPPED \[\d+\] .*earlier stage s3 diverged", out)
    # the report reads like the oracle's: stage, errors, where, tolerance and why
    assert "stage s3 diverges from refpose float64 (config tiny, batch 2, input photo)" in out
    assert re.search(r"max abs error \S+, max rel error 0\.\d+ \(to max\|ref\| = ", out)
    assert re.search(r"largest at \(n, c, h, w\) = \[\d, \d+, \d+, \d+\] \(got ", out)
    assert "tolerance 0.0001 as max|got - ref| / max|ref|: float32 backend vs float64 reference" in out


def test_without_options_the_suite_skips_itself(tmp_path):
    status, out = run_suite(tmp_path)
    assert status == 0 and summary(out) == {"skipped": 1}
    assert "needs --refpose-backend" in out


def test_a_bad_option_is_a_usage_error(tmp_path):
    status, out = run_suite(tmp_path, "--refpose-backend", "tflite:model.tflite", "--refpose-weights", "w")
    assert status == 4                                        # pytest's usage error
    assert "refpose conformance: backend 'tflite:model.tflite': expected onnx:" in out


# --- its parts, in-process ---------------------------------------------------------------------------
PORT = '''
import numpy as np
import refpose

def make(weights, config):
    """refpose itself in float32, as a port; REFPOSE_BREAK names a tensor to perturb."""
    wf = refpose.read_weights(weights)
    tensors = dict(wf.tensors)
    key = {broken!r}
    if key:
        tensors[key] = tensors[key] * 1.5
    from refpose.weights import from_tensors
    model = from_tensors(tensors, config, "float32", "reference")
    return lambda x: {{("heatmaps" if k == "head" else k): v for k, v in model.taps(x).items()}}
'''


@pytest.fixture
def weights_file(tmp_path, tiny_tensors):
    path = tmp_path / "tiny.safetensors"
    refpose.save_weights(path, tiny_tensors, "tiny", trained=False)
    return path


def python_port(tmp_path, monkeypatch, broken: str = "") -> str:
    name = "port_" + (broken.replace(".", "_") or "faithful")
    (tmp_path / f"{name}.py").write_text(PORT.format(broken=broken))
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"python:{name}:make"


def verdicts(suite, case) -> dict[str, tuple[str, str]]:
    return {stage: (v.status, v.message) for stage in ("stem", "s1", "s2", "s3", "s4", "d1", "d2", "d3", "heatmaps")
            for v in [suite.verdict(case, stage)]}


def test_python_backend_passes_and_locates(tmp_path, monkeypatch, weights_file):
    good = build_suite(backend=python_port(tmp_path, monkeypatch), weights=str(weights_file))
    case = Case("tiny", "fp32", 2, "photo")
    assert {s for s, _ in verdicts(good, case).values()} == {"pass"}
    bad = build_suite(backend=python_port(tmp_path, monkeypatch, "d2.se.fc1.weight"), weights=str(weights_file))
    v = verdicts(bad, case)
    assert [v[k][0] for k in ("s4", "d1", "d2", "d3", "heatmaps")] == ["pass", "pass", "fail", "skip", "skip"]
    assert v["d3"][1] == "earlier stage d2 diverged"
    assert v["d2"][1].startswith("stage d2 diverges from refpose float64 (config tiny, batch 2, input photo)")


def test_float16_mode(tmp_path, monkeypatch, weights_file):
    """The twin in float16: within the float16 tolerance, beyond the float32 one (at the stem)."""
    pytest.importorskip("torch", reason="the float16 port is the PyTorch twin")
    (tmp_path / "half_port.py").write_text(
        "import numpy as np, torch, refpose\n"
        "from refpose.porting.onnx_export import twin_from_weights\n"
        "def make(weights, config):\n"
        "    m = twin_from_weights(refpose.read_weights(weights).tensors, config, 'float16')\n"
        "    def run(x):\n"
        "        with torch.no_grad():\n"
        "            return {k: v.float() for k, v in m.forward_taps(torch.from_numpy(x.astype(np.float16))).items()}\n"
        "    return run\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    half = build_suite(backend="python:half_port:make", weights=str(weights_file), precision="fp16")
    assert half.rtol[0] == 3e-2 and "2^-11" in half.rtol[1]
    assert {s for s, _ in verdicts(half, Case("tiny", "fp16", 1, "normal0")).values()} == {"pass"}
    strict = build_suite(backend="python:half_port:make", weights=str(weights_file))
    status, message = verdicts(strict, Case("tiny", "fp32", 1, "normal0"))["stem"]
    assert status == "fail" and "tolerance 0.0001" in message


def test_golden_files(tmp_path, weights_file):
    golden = tmp_path / "golden.npz"
    dump(weights_file, golden, n=2, seed=5)
    with np.load(golden) as z:
        x, ref = z["input"], {k: z[k] for k in ("stem", "s1", "s2", "s3", "heatmaps")}
    model = refpose.load(weights_file, dtype="float32", impl="reference")
    theirs = {("heatmaps" if k == "head" else k): v for k, v in model.taps(x.astype(np.float32)).items()}
    np.savez(tmp_path / "theirs.npz", **{k: theirs[k] for k in ref})     # a port exposing up to s3
    suite = build_suite(golden=str(golden), outputs=str(tmp_path / "theirs.npz"))
    (case,) = suite.cases()
    assert case.id == "tiny-fp32-b2-golden-seed5"
    v = verdicts(suite, case)
    assert [v[k][0] for k in ("stem", "s1", "s2", "s3", "heatmaps")] == ["pass"] * 5
    assert v["d1"] == ("skip", "the backend does not expose d1")
    theirs["s2"] = theirs["s2"] + 1e-2 * np.abs(theirs["s2"]).max()
    np.savez(tmp_path / "theirs.npz", **{k: theirs[k] for k in ref})
    v = verdicts(build_suite(golden=str(golden), outputs=str(tmp_path / "theirs.npz")), case)
    assert v["s2"][0] == "fail" and "max rel error 0.01 " in v["s2"][1]
    assert v["s3"] == ("skip", "earlier stage s2 diverged")
    np.savez(tmp_path / "odd.npz", logits=theirs["heatmaps"])
    with pytest.raises(DataError, match="keys are 'heatmaps'"):
        build_suite(golden=str(golden), outputs=str(tmp_path / "odd.npz"))


@pytest.mark.onnx
def test_openvino_backend_sees_the_stages_of_a_plain_export(exports):
    pytest.importorskip("openvino", reason="the openvino: backend needs OpenVINO")
    suite = build_suite(backend=f"openvino:{exports / 'broken.onnx'}", weights=str(exports / "tiny.safetensors"))
    v = verdicts(suite, Case("tiny", "fp32", 1, "normal1"))
    assert [v[k][0] for k in ("stem", "s1", "s2", "s3", "s4")] == ["pass", "pass", "pass", "fail", "skip"]


def test_weights_are_made_when_absent_and_configs_found(tmp_path, tiny_tensors):
    path = tmp_path / "made.safetensors"
    with pytest.raises(WeightsError, match="--refpose-config"):
        build_suite(backend="python:nowhere:make", weights=str(path))
    with pytest.raises(BackendError, match="cannot import 'nowhere'"):
        build_suite(backend="python:nowhere:make", weights=str(path), config="tiny")
    made = refpose.read_weights(path)                 # written before the backend was opened
    assert made.config.name == "tiny" and made.trained is False
    for k, v in refpose.init_weights("tiny", seed=0).items():
        assert np.array_equal(made.tensors[k], v), k
    bare = tmp_path / "bare.npz"
    np.savez(bare, **tiny_tensors)                    # no config in the file: found by its tensors
    assert [c.name for c in configs_allowed(str(bare))] == ["tiny"]


def test_inputs():
    H, W = refpose.get_config("tiny").input_size
    photo = case_inputs("tiny", "photo", 3)
    assert photo.shape == (3, 3, H, W) and photo.dtype == np.float64
    assert np.array_equal(photo.astype(np.float32).astype(np.float64), photo)
    assert np.array_equal(photo[1], photo[0][:, :, ::-1]) and np.array_equal(photo[2], photo[0][:, ::-1, :])
    # a grayscale photo, normalised with the ImageNet mean and std (DESIGN section 1): undoing the
    # normalisation gives the same grey level in every channel, within [0, 1], not constant
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    grey = photo[0] * std[:, None, None] + mean[:, None, None]
    assert np.allclose(grey, grey[0], atol=1e-6) and grey.min() >= -1e-6 and grey.max() <= 1 + 1e-6
    assert grey.std() > 0.1
    assert np.array_equal(case_inputs("tiny", "photo", 2), photo[:2])
    assert np.all(case_inputs("tiny", "plus5sigma", 2) == 5.0) and np.all(case_inputs("tiny", "minus5sigma", 1) == -5.0)
    assert not case_inputs("tiny", "zeros", 3).any()
    assert not np.array_equal(case_inputs("tiny", "normal0", 1), case_inputs("tiny", "normal1", 1))


def test_the_plugin_stays_out_of_other_runs(tmp_path):
    """Loaded by every pytest run, the plugin imports nothing of the suite unless asked."""
    (tmp_path / "test_other.py").write_text(
        "import sys\n"
        "def test_nothing_loaded():\n"
        "    loaded = [m for m in ('refpose.porting.conformance.suite', 'refpose.porting.oracle', 'onnxruntime', 'torch')\n"
        "              if m in sys.modules]\n"
        "    assert loaded == []\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_other.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    plugins = subprocess.run([sys.executable, "-m", "pytest", "--version", "--version"],
                             capture_output=True, text=True, timeout=300)
    assert os.path.join("conformance", "plugin.py") in plugins.stdout + plugins.stderr  # registered


@pytest.mark.onnx
def test_a_model_of_another_config_is_refused(exports, tmp_path):
    with pytest.raises(WeightsError, match=r"made\.safetensors: weights for config 'wgnet-c', but .*good\.onnx "
                                           r"was exported for config 'tiny'"):
        build_suite(backend=f"onnx:{exports / 'good.onnx'}", weights=str(tmp_path / "made.safetensors"),
                    config="wgnet-c")


# --- usage errors: one line from pytest (status 4), never INTERNALERROR (issue 23, item 17) ----------
def _usage_error_line(status, out, words):
    assert status == 4, out[-2000:]                           # pytest's usage error, not 3 (internal error)
    assert "INTERNALERROR" not in out and "Traceback" not in out, out[-2000:]
    lines = [line for line in out.splitlines() if "refpose conformance:" in line]
    assert len(lines) == 1 and words in lines[0], out[-2000:]


@pytest.mark.parametrize("code, words", [
    ("raise RuntimeError('no GPU here')\n", "importing 'port_mod' raised RuntimeError: no GPU here"),
    ("def make(weights, config):\n    raise ValueError('bad weights')\n", "the factory raised ValueError: bad weights"),
    ("make = 3\n", "port_mod has no callable 'make'"),
])
def test_a_python_port_that_fails_to_load_is_a_usage_error(tmp_path, weights_file, code, words):
    (tmp_path / "port_mod.py").write_text(code)
    status, out = run_suite(tmp_path, "--refpose-backend", "python:port_mod:make", "--refpose-weights", weights_file)
    _usage_error_line(status, out, words)


def test_a_python_port_that_raises_on_an_input_fails_its_cases_in_one_line(tmp_path, monkeypatch, weights_file):
    (tmp_path / "raising_port.py").write_text("def make():\n    def run(x):\n        raise MemoryError()\n"
                                              "    return run\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    suite = build_suite(backend="python:raising_port:make", weights=str(weights_file))
    status, message = verdicts(suite, Case("tiny", "fp32", 1, "normal0"))["stem"]
    assert status == "fail" and message.endswith("python:raising_port:make raised MemoryError on input (1, 3, 128, 96)")


def _golden_with(tmp_path, weights_file, **changes):
    """A golden file of two inputs with some arrays replaced, and the port's outputs for it."""
    dump(weights_file, tmp_path / "g.npz", n=2, seed=0)
    with np.load(tmp_path / "g.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / "theirs.npz", heatmaps=arrays["heatmaps"].astype(np.float32))
    arrays.update(changes)
    np.savez(tmp_path / "g.npz", **arrays)
    return tmp_path / "g.npz", tmp_path / "theirs.npz"


@pytest.mark.parametrize("changes, words", [
    ({"config": np.array("{not json")}, "'config' is not a refpose config"),
    ({"config": np.array("[1, 2]")}, "'config' is not a refpose config"),
    ({"config": np.array(["tiny", "wgnet"])}, "'config' must be the config as a JSON string"),
    ({"seed": np.array([1, 2])}, "'seed' must be one integer, got an array of shape (2,)"),
    ({"seed": np.array(0.5)}, "'seed' must be one integer"),
    ({"input": np.array(1.0)}, "'input' must have shape (N, 3, H, W) with N >= 1, got ()"),
    ({"input": np.zeros((0, 3, 128, 96))}, "'input' must have shape (N, 3, H, W) with N >= 1"),
    ({"s2": np.array("text")}, "'s2' has shape ()"),
    ({"format": np.array(["refpose-oracle/1"] * 2)}, "not a refpose golden file"),
])
def test_a_damaged_golden_file_is_one_data_error(tmp_path, weights_file, changes, words):
    """A golden file whose config is not JSON, a seed of shape (2,), a 0-d input: INTERNALERROR before."""
    golden, theirs = _golden_with(tmp_path, weights_file, **changes)
    with pytest.raises(DataError, match=re.escape(words)):
        build_suite(golden=str(golden), outputs=str(theirs))


def test_a_damaged_golden_file_through_pytest_is_a_usage_error(tmp_path, weights_file):
    golden, theirs = _golden_with(tmp_path, weights_file, seed=np.array([1, 2]))
    status, out = run_suite(tmp_path, "--refpose-golden", golden, "--refpose-outputs", theirs)
    _usage_error_line(status, out, "'seed' must be one integer, got an array of shape (2,)")


@pytest.mark.parametrize("outputs, words", [
    ({"heatmaps": np.array(1.0)}, "'heatmaps' must be an NCHW array of floating-point numbers, got shape ()"),
    ({"heatmaps": np.array(["a", "b"])}, "'heatmaps' must be an NCHW array of floating-point numbers"),
])
def test_a_damaged_outputs_file_is_one_data_error(tmp_path, weights_file, outputs, words):
    golden, theirs = _golden_with(tmp_path, weights_file)
    np.savez(theirs, **outputs)
    with pytest.raises(DataError, match=re.escape(words)):
        build_suite(golden=str(golden), outputs=str(theirs))


def test_shipped_weights_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    # `--refpose-weights tiny-synthetic` is the shipped file, as in every command; before, a file
    # of seeded weights named "tiny-synthetic" was written into the current folder instead
    from refpose.weights import weights_path

    monkeypatch.chdir(tmp_path)
    suite = build_suite(backend=python_port(tmp_path, monkeypatch), weights="tiny-synthetic")
    assert not (tmp_path / "tiny-synthetic").exists()
    assert suite.weights == weights_path("tiny-synthetic") and refpose.read_weights(suite.weights).trained
    case = Case("tiny", "fp32", 2, "photo")
    assert {s for s, _ in verdicts(suite, case).values()} == {"pass"}
