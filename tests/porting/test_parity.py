"""Parity of the NumPy model with the PyTorch twin, and with golden outputs when torch is absent.

The twin (refpose/twin.py) is a second implementation written from DESIGN.md alone: PyTorch
ops, BatchNorm kept as its own module (the NumPy model folds it into the conv at bind time),
LayerNorm from torch. Agreement on every stage output (tap) of every named config, with
seeded weights whose BN statistics and norm scales are far from their defaults, is the
evidence that the NumPy model is the network of DESIGN section 1.

Tolerances are relative to max |reference| of the tap compared:
- float64: 1e-9. The two implementations sum in different orders; float64 rounding
  (eps 1.1e-16) accumulated through ~60 layers measures ~1e-15 here, so 1e-9 leaves six
  orders of headroom for other BLAS builds and still catches a 3e-9 relative change of one
  weight tensor (test_a_perturbation_just_beyond_tolerance_is_detected).
- float32: 1e-4. float32 eps is 6e-8; measured differences are ~1e-6, so 1e-4 tolerates
  other summation orders and catches a wrong block, which moves outputs by O(1). Subtle
  slips are the float64 check's job: a LayerNorm eps of 1e-6 instead of 1e-5 moves the
  output by only 4e-5 relative, inside the float32 tolerance and 4e4 times the float64 one.

Run with `pytest -s tests/porting/test_parity.py` to print the measured max relative differences.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import refpose
from refpose.weights import from_tensors

TOL = {"float64": 1e-9, "float32": 1e-4}
CONFIG_NAMES = ("wgnet", "wgnet-a", "wgnet-b", "wgnet-c", "tiny")
IMPLS = ("reference", "fast")
WEIGHTS_SEED = 0
INPUT_SEED = 11
BATCH = 2
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "tiny_golden.npz"
REGENERATE = "regenerate the golden file (python tests/golden/make_golden.py, needs torch)"


def relative_errors(ref: dict, got: dict) -> dict[str, float]:
    """tap -> max |got - ref| / max |ref|, in the order of ref."""
    return {k: float(np.abs(got[k] - ref[k]).max() / np.abs(ref[k]).max()) for k in ref}


def taps_beyond(errors: dict[str, float], tol: float) -> list[str]:
    """The taps whose relative error exceeds tol, in forward order."""
    return [k for k, e in errors.items() if not e <= tol]   # `not <=` also flags NaN


def describe(errors: dict[str, float]) -> str:
    return ", ".join(f"{k} {e:.1e}" for k, e in errors.items())


def seeded_input(cfg, dtype: str) -> np.ndarray:
    H, W = cfg.input_size
    return np.random.default_rng(INPUT_SEED).standard_normal((BATCH, 3, H, W)).astype(dtype)


# --- the seeded weights are a meaningful test (no torch needed) ------------------------------------
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_seeded_weights_have_nontrivial_norm_statistics(name):
    # a backend that ignored BN running statistics, the BN affine or the LN affine would
    # still agree with weights at their defaults (var 1, mean 0, scale 1, shift 0)
    cfg = refpose.get_config(name)
    tensors = refpose.init_weights(cfg, WEIGHTS_SEED)
    defaults = {"bn.running_var": 1.0, "bn.running_mean": 0.0, "bn.weight": 1.0, "bn.bias": 0.0}
    if any(s.window_attn or s.global_attn for s in cfg.encoder + cfg.decoder):   # wgnet-c has no LayerNorm
        defaults.update({"norm.weight": 1.0, "norm.bias": 0.0})
    for suffix, default in defaults.items():
        keys = [k for k in tensors if k.endswith(suffix)]
        assert keys, f"{name}: no {suffix} tensors"
        for k in keys:
            assert np.abs(tensors[k] - default).max() > 0.01, f"{k} is (nearly) all at its default {default}"
        # and most entries are away from it (biases are drawn with std 0.05, statistics wider)
        away = np.concatenate([np.abs(tensors[k] - default).ravel() > 0.01 for k in keys])
        assert away.mean() > 0.5, f"{name}: most {suffix} entries are at the default {default}"
        if suffix == "bn.running_var":
            assert all((tensors[k] > 0).all() for k in keys), "a running variance must be positive"


# --- parity with the twin (needs torch) ----------------------------------------------------------
class Twin:
    """Twin outputs per (config, dtype), computed once for the module (a full-size forward ~1 s)."""

    def __init__(self, torch):
        self.torch, self.cache = torch, {}

    def tensors(self, name):
        key = ("tensors", name)
        if key not in self.cache:
            self.cache[key] = refpose.init_weights(name, WEIGHTS_SEED)
        return self.cache[key]

    def taps(self, name, dtype):
        key = ("taps", name, dtype)
        if key not in self.cache:
            torch = self.torch
            from refpose.porting.twin import WGNetTwin
            cfg = refpose.get_config(name)
            twin = WGNetTwin(cfg).eval()
            twin = twin.double() if dtype == "float64" else twin.float()
            twin.load_numpy(self.tensors(name))
            with torch.inference_mode():
                out = twin.forward_taps(torch.from_numpy(seeded_input(cfg, dtype)))
            self.cache[key] = {k: v.numpy() for k, v in out.items()}
        return self.cache[key]


pytestmark = pytest.mark.usefixtures("single_threaded_blas")


@pytest.fixture(scope="module")
def twin():
    torch = pytest.importorskip("torch", reason="parity with the PyTorch twin needs torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                # as `single_threaded`, for torch's own thread pool
    yield Twin(torch)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def measured():
    """Max relative differences seen, printed as a table at the end of the module (pytest -s)."""
    table = {}
    yield table
    if table:
        print("\nmax |numpy - twin| / max |twin| (float64: worst tap; float32: output)")
        print(f"{'config':8} {'impl':9} {'float64':>9} {'(tap)':6} {'float32':>9}")
        for (name, impl), row in sorted(table.items()):
            f64, tap = row.get("float64", (float("nan"), "-"))
            f32, _ = row.get("float32", (float("nan"), "-"))
            print(f"{name:8} {impl:9} {f64:9.1e} {tap:6} {f32:9.1e}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_float64_every_tap_matches_the_twin(twin, measured, name, impl):
    cfg = refpose.get_config(name)
    model = from_tensors(twin.tensors(name), cfg, "float64", impl=impl)
    got = model.taps(seeded_input(cfg, "float64"))
    ref = twin.taps(name, "float64")
    assert list(got) == list(ref) == list(refpose.TAPS)
    for k in ref:
        assert got[k].shape == ref[k].shape and got[k].dtype == np.float64, k
    errors = relative_errors(ref, got)
    worst = max(errors, key=errors.get)
    measured.setdefault((name, impl), {})["float64"] = (errors[worst], worst)
    bad = taps_beyond(errors, TOL["float64"])
    assert not bad, f"{name} ({impl}): first tap beyond 1e-9 is {bad[0]}; {describe(errors)}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_float32_output_matches_the_twin(twin, measured, name, impl):
    cfg = refpose.get_config(name)
    model = from_tensors(twin.tensors(name), cfg, "float32", impl=impl)
    got = model(seeded_input(cfg, "float32"))
    ref = twin.taps(name, "float32")["head"]
    assert got.dtype == np.float32 and got.shape == ref.shape == (BATCH, 17, *cfg.output_size())
    error = relative_errors({"head": ref}, {"head": got})["head"]
    measured.setdefault((name, impl), {})["float32"] = (error, "head")
    assert error <= TOL["float32"], f"{name} ({impl}): float32 output differs by {error:.2e} relative"


def test_the_twin_keeps_batchnorm_unfolded(twin):
    # the parity above compares BN folded into the conv (NumPy) with BN applied as its own
    # op from running statistics (torch eval mode): check the twin really is the latter
    torch = twin.torch
    from refpose.porting.twin import WGNetTwin
    tensors = twin.tensors("tiny")
    model = WGNetTwin("tiny").double().eval()
    model.load_numpy(tensors)
    bns = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert set(f"{name}.running_var" for name in bns) == {k for k in tensors if k.endswith("bn.running_var")}
    for name, bn in bns.items():
        assert not bn.training and bn.track_running_stats
        np.testing.assert_array_equal(bn.running_var.numpy(), tensors[f"{name}.running_var"].astype(np.float64))
        np.testing.assert_array_equal(bn.running_mean.numpy(), tensors[f"{name}.running_mean"].astype(np.float64))
    # and the convolutions hold the file's weights as they are, not scaled by the BN
    state = model.state_dict()
    for k in (k for k in tensors if k.endswith("conv.weight")):
        np.testing.assert_array_equal(state[k].numpy(), tensors[k].astype(np.float64), err_msg=k)


@pytest.mark.parametrize("dtype, delta", [("float64", 3e-9), ("float32", 3e-4)])
def test_a_perturbation_just_beyond_tolerance_is_detected(twin, dtype, delta):
    # scale one weight tensor of s2 by (1 + delta), with delta 3x the tolerance: the output
    # moves by about delta relative (measured: 1.1 delta at s2, 0.5-1.1 delta downstream),
    # so the check must fail, first at s2, while stem and s1 still agree
    key = "s2.blocks.0.glob.qkv.weight"
    cfg = refpose.get_config("tiny")
    tensors = dict(twin.tensors("tiny"))
    tensors[key] = tensors[key].astype(np.float64) * (1 + delta)     # float64: 3e-9 is below float32 resolution
    got = from_tensors(tensors, cfg, dtype, impl="reference").taps(seeded_input(cfg, dtype))
    errors = relative_errors(twin.taps("tiny", dtype), got)
    bad = taps_beyond(errors, TOL[dtype])
    assert bad and bad[0] == "s2", describe(errors)
    assert errors["s2"] < 10 * TOL[dtype], describe(errors)           # just beyond, not far beyond
    assert errors["stem"] <= TOL[dtype] and errors["s1"] <= TOL[dtype], describe(errors)


def test_a_perturbation_below_tolerance_passes(twin):
    # the other side of the line: a 1e-11 relative change of the same tensor is within 1e-9
    key = "s2.blocks.0.glob.qkv.weight"
    cfg = refpose.get_config("tiny")
    tensors = dict(twin.tensors("tiny"))
    tensors[key] = tensors[key].astype(np.float64) * (1 + 1e-11)
    got = from_tensors(tensors, cfg, "float64", impl="reference").taps(seeded_input(cfg, "float64"))
    errors = relative_errors(twin.taps("tiny", "float64"), got)
    assert not taps_beyond(errors, TOL["float64"]), describe(errors)
    assert errors["s2"] > 1e-12, "the perturbation should be visible, only small"


# --- golden outputs (no torch needed) ------------------------------------------------------------
@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN.name} is missing; {REGENERATE}")
    with np.load(GOLDEN, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def golden_input(g) -> np.ndarray:
    cfg = refpose.get_config(json.loads(str(g["config"])))
    H, W = cfg.input_size
    return np.random.default_rng(int(g["input_seed"])).standard_normal((int(g["batch"]), 3, H, W))


def checksum(tensors: dict, key: str) -> tuple[float, float]:
    """(sum, sum of squares) in float64; key "*" is all tensors in sorted key order."""
    keys = sorted(tensors) if key == "*" else [key]
    a = np.concatenate([tensors[k].astype(np.float64).ravel() for k in keys])
    return float(a.sum()), float((a * a).sum())


def check_golden_sources(g) -> None:
    """Fail with a clear message when the config, the initialiser or the input stream changed."""
    cfg = refpose.get_config(json.loads(str(g["config"])))
    if cfg != refpose.get_config("tiny"):
        pytest.fail(f"the tiny config changed; {REGENERATE}")
    tensors = refpose.init_weights(cfg, int(g["weights_seed"]))
    for key, s, s2 in zip(g["init_keys"], g["init_sum"], g["init_sumsq"]):
        # the same float32 values summed in the same order: equal up to float64 rounding
        key = str(key)
        if key != "*" and key not in tensors:
            pytest.fail(f"the seeded initialiser changed; {REGENERATE} (no tensor {key})")
        if not np.allclose(checksum(tensors, key), (s, s2), rtol=1e-12, atol=0):
            pytest.fail(f"the seeded initialiser changed; {REGENERATE} (checksum of {key} differs)")
    x = golden_input(g)
    if not np.allclose((x.sum(), (x * x).sum()), (g["input_sum"], g["input_sumsq"]), rtol=1e-12, atol=0):
        pytest.fail(f"numpy's seeded random stream changed (the golden input); {REGENERATE}")


def test_golden_file_is_compact_and_self_describing(golden):
    assert GOLDEN.stat().st_size < 64_000
    assert json.loads(str(golden["config"]))["name"] == "tiny"
    assert golden["head_index"].size == golden["head_value"].size == 1024
    assert list(golden["taps"]) == list(refpose.TAPS)


def test_the_seeded_initialiser_is_unchanged(golden):
    check_golden_sources(golden)


def test_a_changed_initialiser_is_reported(golden, monkeypatch):
    # the guard above must be able to fail: a seeded initialiser that draws differently
    real = refpose.init_weights
    monkeypatch.setattr(refpose, "init_weights", lambda cfg, seed=0: real(cfg, seed + 1))
    with pytest.raises(pytest.fail.Exception, match="the seeded initialiser changed; regenerate"):
        check_golden_sources(golden)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_numpy_model_matches_the_golden_outputs(golden, dtype, impl):
    check_golden_sources(golden)
    cfg = refpose.get_config("tiny")
    model = refpose.build(cfg, seed=int(golden["weights_seed"]), dtype=dtype, impl=impl)
    taps = model.taps(golden_input(golden).astype(dtype))
    head = taps["head"]
    assert head.shape == tuple(golden["head_shape"])
    tol = TOL[dtype]
    error = np.abs(head.ravel()[golden["head_index"]] - golden["head_value"]).max() / golden["absmax_head"]
    assert error <= tol, f"output at 1024 positions differs by {error:.2e} relative ({dtype}, {impl})"
    errors = {k: float(np.abs(t.astype(np.float64).mean(axis=(0, 2, 3)) - golden[f"mean_{k}"]).max()
                       / golden[f"absmax_{k}"]) for k, t in taps.items()}
    bad = taps_beyond(errors, tol)
    assert not bad, f"per-channel means differ, first at {bad[0]}: {describe(errors)}"
