"""Weight files (refpose/weights.py, DESIGN section 3) and the commands that write them.

Metadata is read back with the safetensors library and numpy directly, not with refpose's
reader; damaged and foreign files are written by hand; BatchNorm folding is checked against
the convolution and BN formulas written out here; sizes come from DESIGN's table or from
torch's own FLOP counter on the twin.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import refpose
from refpose.cli import main
from refpose.errors import WeightsError
from refpose.layers import walk
from refpose.weights import from_tensors

TINY_JSON = refpose.get_config("tiny").to_json()
BN_EPS = 1e-5        # torch.nn.BatchNorm2d default, DESIGN section 1
# float64 parity of two implementations that round in different orders (measured ~1e-15
# relative; see tests/porting/test_parity.py)
TOL64 = 1e-9


pytestmark = pytest.mark.usefixtures("single_threaded_blas")


def write_safetensors(path, tensors, config_json=TINY_JSON):
    """A weights file written without refpose's writer (no checks on the way out)."""
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
              metadata=None if config_json is None else {"format": "test", "config": config_json})
    return path


# --- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_round_trip_is_bit_exact(tmp_path, tiny_tensors, tiny_input, suffix):
    path = tmp_path / f"tiny{suffix}"
    refpose.save_weights(path, tiny_tensors, "tiny", trained=False)
    wf = refpose.read_weights(path)
    assert set(wf.tensors) == set(tiny_tensors)
    for k, a in tiny_tensors.items():
        assert wf.tensors[k].dtype == a.dtype and np.array_equal(wf.tensors[k], a), k
    loaded = refpose.load(path, dtype="float64", impl="reference")
    direct = from_tensors(tiny_tensors, "tiny", "float64", impl="reference")
    got, want = loaded.taps(tiny_input), direct.taps(tiny_input)
    for k in want:
        assert np.array_equal(got[k], want[k]), k          # same bits, not just close
    assert loaded.trained is False


def test_safetensors_metadata_read_directly(tmp_path, tiny_tensors):
    path = tmp_path / "tiny.safetensors"
    refpose.save_weights(path, tiny_tensors, "tiny", trained=False)
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert {"format", "config", "trained"} <= set(meta)
    assert isinstance(meta["format"], str) and meta["format"]
    config = json.loads(meta["config"])
    assert config["name"] == "tiny" and config["input_size"] == [128, 96]
    assert refpose.get_config(config) == refpose.get_config("tiny")     # the full config, not a name
    assert json.loads(meta["trained"]) is False
    assert keys == set(tiny_tensors)

    refpose.save_weights(path, tiny_tensors, "tiny", trained=True)
    with safe_open(str(path), framework="numpy") as f:
        assert json.loads(f.metadata()["trained"]) is True


def test_npz_metadata_read_directly(tmp_path, tiny_tensors):
    path = tmp_path / "tiny.npz"
    refpose.save_weights(path, tiny_tensors, "tiny", trained=False)
    with np.load(path, allow_pickle=False) as z:
        assert z["config"].ndim == 0 and z["config"].dtype.kind == "U"     # a 0-d string array
        assert refpose.get_config(json.loads(str(z["config"]))) == refpose.get_config("tiny")
        assert str(z["trained"]) == "false"
        assert set(z.files) - {"format", "config", "trained"} == set(tiny_tensors)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_a_file_without_config_needs_the_caller_to_name_it(tmp_path, tiny_tensors, tiny_input, suffix):
    path = tmp_path / f"bare{suffix}"
    if suffix == ".npz":
        np.savez(path, **tiny_tensors)
    else:
        write_safetensors(path, tiny_tensors, config_json=None)
    with pytest.raises(WeightsError, match=rf"bare{suffix}.*no config.*config="):
        refpose.load(path)
    model = refpose.load(path, config="tiny", dtype="float64", impl="reference")
    want = from_tensors(tiny_tensors, "tiny", "float64", impl="reference")(tiny_input)
    assert np.array_equal(model(tiny_input), want)
    # naming the wrong config is caught by the strict key check
    with pytest.raises(WeightsError, match=r"missing key"):
        refpose.load(path, config="wgnet")


# --- .npz never unpickles ------------------------------------------------------------------------
UNPICKLED = []


def _record_unpickling():
    UNPICKLED.append(True)
    return 0.0


class Trap:
    """An object whose unpickling leaves a trace in UNPICKLED."""

    def __reduce__(self):
        return _record_unpickling, ()


def test_npz_with_an_object_array_is_rejected_not_unpickled(tmp_path, tiny_tensors):
    path = tmp_path / "pickled.npz"
    np.savez(path, **dict(tiny_tensors, **{"head.bias": np.array([Trap()] * 17, dtype=object)}),
             config=np.array(TINY_JSON))
    UNPICKLED.clear()
    with pytest.raises(WeightsError, match="pickled.npz"):
        refpose.load(path)
    assert UNPICKLED == [], "refpose unpickled an object array from an .npz"
    # the trap is armed: numpy with allow_pickle=True does run it
    with np.load(path, allow_pickle=True) as z:
        z["head.bias"]
    assert UNPICKLED


# --- strictness ----------------------------------------------------------------------------------
def _one_bad(a, value):
    a = a.copy()
    a.flat[a.size // 2] = value
    return a


# (file name, key, the key's new value from its old one (None: drop the key), what the error says)
STRICT_CASES = [
    ("missing", "s2.blocks.0.glob.qkv.bias", lambda a: None,
     r"missing key 's2\.blocks\.0\.glob\.qkv\.bias'.*\(192,\)"),
    ("unexpected", "s1.blocks.0.win.rpb", lambda a: np.zeros((1, 15, 11), np.float32),
     r"unexpected key 's1\.blocks\.0\.win\.rpb'"),
    ("shape", "head.weight", lambda a: np.zeros((17, 33, 1, 1), np.float32),
     r"'head\.weight'.*\(17, 33, 1, 1\).*\(17, 32, 1, 1\)"),
    ("int", "head.bias", lambda a: np.zeros(17, np.int32), r"'head\.bias'.*int32"),
    ("nan", "d1.se.fc1.weight", lambda a: _one_bad(a, np.nan), r"'d1\.se\.fc1\.weight'.*non-finite"),
    ("inf", "s3.ir.dw.bn.running_var", lambda a: _one_bad(a, np.inf), r"'s3\.ir\.dw\.bn\.running_var'.*non-finite"),
]


@pytest.mark.parametrize("name, key, change, pattern", STRICT_CASES, ids=[c[0] for c in STRICT_CASES])
def test_loading_is_strict(tmp_path, tiny_tensors, name, key, change, pattern):
    bad = dict(tiny_tensors)
    value = change(bad.pop(key, None))
    if value is not None:
        bad[key] = value
    path = write_safetensors(tmp_path / f"{name}.safetensors", bad)
    with pytest.raises(WeightsError, match=pattern) as e:
        refpose.load(path)
    assert f"{name}.safetensors" in str(e.value)
    with pytest.raises(WeightsError, match=pattern):          # and the writer refuses the same tensors
        refpose.save_weights(tmp_path / "out.safetensors", bad, "tiny", trained=False)
    assert not (tmp_path / "out.safetensors").exists()


def test_num_batches_tracked_is_accepted_and_ignored(tmp_path, tiny_tensors, tiny_input):
    counters = {"s1.ir.dw.bn.num_batches_tracked": np.array(1234, np.int64)}
    path = write_safetensors(tmp_path / "counted.safetensors", dict(tiny_tensors, **counters))
    model = refpose.load(path, dtype="float64", impl="reference")
    want = from_tensors(tiny_tensors, "tiny", "float64", impl="reference")(tiny_input)
    assert np.array_equal(model(tiny_input), want)


def test_weights_for_another_config_are_refused(tmp_path, tiny_tensors):
    path = tmp_path / "tiny.safetensors"
    refpose.save_weights(path, tiny_tensors, "tiny", trained=False)
    with pytest.raises(WeightsError, match=r"tiny\.safetensors.*'tiny'.*'wgnet'"):
        refpose.load(path, config="wgnet")
    assert refpose.load(path, config="tiny").config.name == "tiny"      # naming the right one is fine


@pytest.fixture
def real_file(tmp_path, tiny_tensors):
    def make(suffix):
        path = tmp_path / f"real{suffix}"
        refpose.save_weights(path, tiny_tensors, "tiny", trained=False)
        return path
    return make


@pytest.mark.parametrize("damage", ["truncated.safetensors", "truncated.npz", "empty.safetensors",
                                    "text.safetensors", "text.npz", "missing.safetensors"])
def test_a_damaged_file_is_a_weights_error_naming_it(tmp_path, real_file, damage):
    path = tmp_path / damage
    kind = damage.split(".")[0]
    if kind == "truncated":
        data = real_file("." + damage.split(".")[1]).read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("these are not the weights you are looking for\n")
    with pytest.raises(WeightsError, match=damage.replace(".", r"\.")):
        refpose.load(path)


def test_the_cli_reports_a_damaged_file_in_one_line(tmp_path, capsys):
    path = tmp_path / "text.safetensors"
    path.write_text("not weights")
    assert main(["info", "--weights", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "text.safetensors" in captured.err


# --- BatchNorm folding (DESIGN section 3: folded at load, in the compute dtype) -------------------
def conv_by_definition(x, w, stride, kind):
    """PyTorch Conv2d / ConvTranspose2d (bias=False) written out; x NHWC, w in PyTorch layout."""
    N, H, W, _ = x.shape
    if kind == "transposed":                         # kernel == stride, no overlap
        Cin, Cout, k, _ = w.shape
        y = np.zeros((N, H * k, W * k, Cout))
        for h in range(H):
            for v in range(W):
                for a in range(k):
                    for b in range(k):
                        y[:, h * k + a, v * k + b] = x[:, h, v] @ w[:, :, a, b]
        return y
    Cout, _, k, _ = w.shape
    p = k // 2
    xp = np.zeros((N, H + 2 * p, W + 2 * p, x.shape[3]))
    xp[:, p:p + H, p:p + W] = x
    Ho, Wo = (H + 2 * p - k) // stride + 1, (W + 2 * p - k) // stride + 1
    y = np.zeros((N, Ho, Wo, Cout))
    for oh in range(Ho):
        for ow in range(Wo):
            patch = xp[:, oh * stride:oh * stride + k, ow * stride:ow * stride + k]      # (N, k, k, Cin)
            if kind == "depthwise":
                y[:, oh, ow] = np.einsum("nijc,cij->nc", patch, w[:, 0])
            else:
                y[:, oh, ow] = np.einsum("nijc,ocij->no", patch, w)
    return y


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("unit, kind, stride, act, hw", [
    ("stem.1.pw", "conv", 1, True, (5, 7)),            # dense 1x1 with ReLU6
    ("s2.ir.dw", "depthwise", 2, True, (6, 5)),        # depthwise 3x3, stride 2, odd width
    ("s1.ir.project", "conv", 1, False, (4, 3)),       # linear 1x1 projection
    ("d2.skip", "conv", 1, False, (4, 3)),             # the decoder's skip projection
    ("d1.up", "transposed", 2, True, (3, 2)),          # ConvTranspose2d 2x2 stride 2
])
def test_batchnorm_folding_matches_conv_then_bn(tiny_tensors, impl, unit, kind, stride, act, hw):
    t = {k: v.astype(np.float64) for k, v in tiny_tensors.items()}
    model = from_tensors(tiny_tensors, "tiny", "float64", impl=impl)
    layer = dict(walk(model))[unit]
    w = t[f"{unit}.conv.weight"]
    cin = w.shape[0] if kind in ("transposed", "depthwise") else w.shape[1]
    x = np.random.default_rng(3).standard_normal((2, *hw, cin))                    # (N, H, W, Cin)
    y = conv_by_definition(x, w, stride, kind)
    mean, var = t[f"{unit}.bn.running_mean"], t[f"{unit}.bn.running_var"]
    y = (y - mean) / np.sqrt(var + BN_EPS) * t[f"{unit}.bn.weight"] + t[f"{unit}.bn.bias"]
    if act:
        y = np.clip(y, 0, 6)
        assert ((y > 0) & (y < 6)).mean() > 0.2, "most outputs clipped: the check would be weak"
    got = layer(x)
    assert got.shape == y.shape and got.dtype == np.float64
    # folding reorders one multiply per tap: float64 rounding, ~1e-15 relative
    assert np.abs(got - y).max() <= 1e-12 * np.abs(y).max()


# --- refpose init / info ---------------------------------------------------------------------------
def trainable_size(path) -> int:
    """Parameters counted from the file itself: BN weight/bias in, running statistics out (DESIGN)."""
    with safe_open(str(path), framework="numpy") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys()
                   if not k.endswith(("running_mean", "running_var")))


def init_then_info(tmp_path, capsys, config, seed, name="out.safetensors"):
    out = tmp_path / name
    assert main(["init", "--config", config, "--seed", str(seed), str(out)]) == 0
    capsys.readouterr()
    assert main(["info", "--weights", str(out), "--json"]) == 0
    return out, json.loads(capsys.readouterr().out)


def test_init_then_info_tiny(tmp_path, capsys):
    out, info = init_then_info(tmp_path, capsys, "tiny", 3)
    assert info["config"] == "tiny"
    assert info["input"] == [128, 96]
    assert info["params"] == trainable_size(out)
    assert isinstance(info["macs"], int) and info["macs"] > 0
    with safe_open(str(out), framework="numpy") as f:
        assert json.loads(f.metadata()["trained"]) is False
        assert json.loads(f.metadata()["config"])["name"] == "tiny"


def test_init_then_info_wgnet_gives_the_design_sizes(tmp_path, capsys):
    # DESIGN section 1, "Reference sizes": params 5,719,154 and MACs 3,590,865,920 at 1x3x256x192
    out, info = init_then_info(tmp_path, capsys, "wgnet", 0)
    assert info["config"] == "wgnet" and info["input"] == [256, 192]
    assert info["params"] == 5_719_154 == trainable_size(out)
    assert info["macs"] == 3_590_865_920


def test_info_macs_agree_with_torch_flop_counter(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="an independent MAC count needs torch's FlopCounterMode")
    from torch.utils.flop_counter import FlopCounterMode

    from refpose.porting.twin import WGNetTwin

    _, info = init_then_info(tmp_path, capsys, "tiny", 3)
    twin = WGNetTwin("tiny").eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        twin(torch.zeros(1, 3, 128, 96))
    # torch counts 2 FLOPs per multiply-accumulate of conv, transposed conv, mm/bmm (linear
    # and both attention matmuls): exactly DESIGN section 2's MACs, times two
    assert info["macs"] * 2 == counter.get_total_flops()


def test_init_is_deterministic_in_the_seed(tmp_path, capsys):
    a, b, c = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    for path, seed in ((a, 3), (b, 3), (c, 4)):
        assert main(["init", "--config", "tiny", "--seed", str(seed), str(path)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    ta, tc = refpose.read_weights(a).tensors, refpose.read_weights(c).tensors
    assert all(not np.array_equal(ta[k], tc[k]) for k in ta), "every tensor is drawn from the seed"


# --- refpose export -------------------------------------------------------------------------------
def test_export_round_trip(tmp_path, capsys, tiny_tensors):
    torch = pytest.importorskip("torch", reason="refpose export reads PyTorch checkpoints")
    from refpose.porting.twin import WGNetTwin

    torch.manual_seed(0)
    twin = WGNetTwin("tiny")
    twin.load_numpy(tiny_tensors)
    twin.train()                       # a few training-mode passes move the BN statistics as
    with torch.no_grad():              # training would, and set num_batches_tracked
        for _ in range(3):
            twin(torch.randn(4, 3, 128, 96))
    twin.eval()
    state = twin.state_dict()
    ckpt, out = tmp_path / "twin.pth", tmp_path / "twin.safetensors"
    torch.save(state, ckpt)
    assert main(["export", str(ckpt), str(out)]) == 0
    assert "twin.safetensors" in capsys.readouterr().out

    with safe_open(str(out), framework="numpy") as f:
        meta = f.metadata()
        back = {k: f.get_tensor(k) for k in f.keys()}
    assert json.loads(meta["trained"]) is True and json.loads(meta["config"])["name"] == "tiny"
    assert set(back) == {k for k in state if not k.endswith("num_batches_tracked")}
    for k, v in back.items():
        assert np.array_equal(v, state[k].numpy()), k

    x = np.random.default_rng(5).standard_normal((2, 3, 128, 96))
    with torch.inference_mode():
        want = twin.double()(torch.from_numpy(x)).numpy()
    got = refpose.load(out, dtype="float64")(x)
    assert np.abs(got - want).max() <= TOL64 * np.abs(want).max()


def test_export_without_torch_is_one_line(tmp_path, capsys, monkeypatch):
    # torch is an optional extra: without it, `refpose export` says so, in one line, status 2
    monkeypatch.setitem(sys.modules, "torch", None)    # `import torch` now fails
    ckpt = tmp_path / "twin.pth"
    ckpt.write_bytes(b"not read")
    assert main(["export", str(ckpt), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torch" in err.lower()
    assert not (tmp_path / "out.safetensors").exists()
