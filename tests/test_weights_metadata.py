"""A weights file's metadata and `refpose info --weights` (issue: hostile files).

The config in the metadata goes through the same checks as a built one (ConfigError naming the
field, reported as a WeightsError naming the file); `trained` is a JSON boolean; `info --weights`
checks the tensors as strictly as loading and counts the file's own tensors.
"""
import json
import re

import numpy as np
import pytest
from safetensors.numpy import save_file
from test_weights import STRICT_CASES, write_safetensors

import refpose
from refpose.cli import main
from refpose.config import MAX_PARAMS, WGNetConfig
from refpose.errors import ConfigError, WeightsError

TINY = refpose.get_config("tiny").to_dict()


def tiny_with(**changes):
    d = json.loads(json.dumps(TINY))          # a deep copy in JSON types (lists, not tuples)
    d.update(changes)
    return d


def stage_with(part, i, **changes):
    d = tiny_with()
    d[part][i].update(changes)
    return d


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# (config dict, what the ConfigError names)
BAD_CONFIGS = [
    (tiny_with(head_dim=0), r"'head_dim' must be between 1 and 4096, got 0"),          # was ZeroDivisionError
    (tiny_with(se_reduction=0), r"'se_reduction' must be between 1"),
    (tiny_with(encoder="s1 s2 s3 s4"), r"'encoder' must be a list of stages"),         # was ValueError
    (tiny_with(encoder=[1, 2, 3, 4]), r"encoder\[0\]: expected a JSON object, got 1"),
    (tiny_with(num_keypoints=-3), r"'num_keypoints' must be between 1 and 4096, got -3"),
    (tiny_with(num_keypoints=10 ** 400), r"'num_keypoints' .* got a number of 401 digits"),
    (tiny_with(num_keypoints=17.0), r"'num_keypoints' must be an integer, got 17.0"),
    (tiny_with(num_keypoints=True), r"'num_keypoints' must be an integer, got true"),
    (tiny_with(input_size=[128]), r"'input_size' must be a pair of integers"),
    (tiny_with(input_size=[4096, 3072]), r"'input_size' 4096x3072 is 12,582,912 pixels, more than the 196,608"),
    (tiny_with(input_size=[128, "96"]), r"'input_size' must be a pair of integers .*got \[128, the string '96'\]"),
    (tiny_with(stem_kernel=4), r"'stem_kernel' must be odd"),
    (tiny_with(name=""), r"'name' must be a name"),
    (tiny_with(colour="blue"), r"unknown field 'colour'"),
    (stage_with("decoder", 1, window_attn="yes"), r"decoder\[1\]: field 'window_attn' must be true or false"),
    (stage_with("encoder", 2, depth=10 ** 6), r"encoder\[2\]: field 'depth' must be between 0 and 64"),
    (stage_with("encoder", 0, shape=[1]), r"encoder\[0\]: unknown field 'shape'"),
    ({k: v for k, v in TINY.items() if k != "stem"}, r"missing field 'stem'"),
    ([TINY], r"expected a JSON object, got a list"),
]
HUGE = {**tiny_with(), **{"stem": [4096, 4096]}, "encoder": [dict(s, channels=4096) for s in TINY["encoder"]],
        "decoder": [dict(s, channels=4096) for s in TINY["decoder"]]}


@pytest.mark.parametrize("d, pattern", BAD_CONFIGS, ids=range(len(BAD_CONFIGS)))
def test_a_bad_config_dict_is_a_config_error_naming_the_field(d, pattern):
    with pytest.raises(ConfigError, match=pattern):
        WGNetConfig.from_dict(d)


def test_a_config_too_large_is_refused_when_its_layer_tree_is_built(tmp_path, capsys, tiny_tensors):
    cfg = WGNetConfig.from_dict(HUGE)                     # a valid config ...
    with pytest.raises(ConfigError, match=r"parameters, more than the 200,000,000 refpose builds"):
        refpose.WGNet(cfg)                                # ... that refpose does not build
    path = write_safetensors(tmp_path / "huge.safetensors", tiny_tensors, config_json=json.dumps(HUGE))
    code, out, err = run(capsys, "info", "--weights", path)
    assert code == 2 and err.count("\n") == 1 and "more than the 200,000,000 refpose builds" in err, err


def test_the_size_limit_is_far_above_the_named_configs():
    model = refpose.WGNet("wgnet", impl="reference")
    assert 30 * model.num_params < MAX_PARAMS


@pytest.mark.parametrize("d, pattern", BAD_CONFIGS[:3], ids=range(3))
def test_a_bad_config_in_the_metadata_is_one_line(tmp_path, capsys, tiny_tensors, d, pattern):
    path = write_safetensors(tmp_path / "bad.safetensors", tiny_tensors, config_json=json.dumps(d))
    with pytest.raises(WeightsError, match="bad.safetensors: the config in the metadata is not valid: .*" + pattern):
        refpose.load(path)
    for argv in (["info", "--weights", path], ["oracle", "dump", path, tmp_path / "out.npz"]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and err.count("\n") == 1 and "bad.safetensors" in err, err


@pytest.mark.parametrize("text", ["[[[[" * 5000, "1" * 5000, "{\"name\": 1e999}"])
def test_unparsable_config_json_is_a_weights_error(tmp_path, tiny_tensors, text):
    path = write_safetensors(tmp_path / "bad.safetensors", tiny_tensors, config_json=text)
    with pytest.raises(WeightsError, match="config in the metadata is not valid"):
        refpose.read_weights(path)


# --- trained ------------------------------------------------------------------------------------
def write_with_trained(path, tensors, trained):
    meta = {"format": "test", "config": json.dumps(TINY)}
    if trained is not None:
        meta["trained"] = trained
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("trained, expected", [("true", True), ("false", False), (None, None)])
def test_trained_is_read(tmp_path, tiny_tensors, trained, expected):
    path = write_with_trained(tmp_path / "w.safetensors", tiny_tensors, trained)
    assert refpose.read_weights(path).trained is expected


@pytest.mark.parametrize("trained", ["yes", "1", "True", "", "untrained", "null"])
def test_trained_that_is_not_a_json_boolean_is_an_error(tmp_path, capsys, tiny_tensors, trained):
    path = write_with_trained(tmp_path / "w.safetensors", tiny_tensors, trained)
    with pytest.raises(WeightsError, match="metadata 'trained' must be true or false"):
        refpose.read_weights(path)
    code, out, err = run(capsys, "info", "--weights", path)
    assert code == 2 and out == "" and "'trained' must be true or false" in err


# --- info --weights -----------------------------------------------------------------------------
@pytest.mark.parametrize("name, key, change, pattern", STRICT_CASES, ids=[c[0] for c in STRICT_CASES])
def test_info_checks_the_tensors_as_loading_does(tmp_path, capsys, tiny_tensors, name, key, change, pattern):
    """A file with a missing key, a wrong shape, NaN or an int dtype was reported as fine."""
    bad = dict(tiny_tensors)
    value = change(bad.pop(key, None))
    if value is not None:
        bad[key] = value
    path = write_safetensors(tmp_path / f"{name}.safetensors", bad)
    code, out, err = run(capsys, "info", "--weights", path)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"refpose info: error: {path}: ")
    assert re.search(pattern, err), err


def test_info_counts_the_files_tensors(tmp_path, capsys, tiny_tensors):
    path = write_with_trained(tmp_path / "w.safetensors", tiny_tensors, "true")
    code, out, err = run(capsys, "info", "--weights", path, "--json")
    assert code == 0, err
    s = json.loads(out)
    # parameters: every tensor of the file but BatchNorm's running statistics, counted here
    expected = sum(a.size for k, a in tiny_tensors.items() if not k.endswith(("running_mean", "running_var")))
    assert s["params"] == expected and s["trained"] is True


# --- info --input -------------------------------------------------------------------------------
def test_info_refuses_a_huge_input_before_allocating(capsys):
    """`refpose info --input 6144x4608` allocated until it failed (2.85 TiB)."""
    code, out, err = run(capsys, "info", "--config", "tiny", "--input", "6144x4608")
    assert code == 2 and out == ""
    assert err == ("refpose info: error: input 6144x4608 is 28,311,552 pixels, more than the 196,608 (512x384) "
                   "refpose runs at\n")


# --- found while probing ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_a_bad_seed_is_a_config_error(seed):
    """`refpose init --seed -1` was a ValueError traceback from NumPy."""
    with pytest.raises(ConfigError, match="seed must be a non-negative integer"):
        refpose.init_weights("tiny", seed=seed)


def test_init_with_a_negative_seed_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run(capsys, "init", "--config", "tiny", "--seed", "-1", tmp_path / "w.safetensors")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == ("refpose init: error: argument --seed: expected a seed between 0 and "
                                         "4,294,967,295, got '-1'\n")
    assert not (tmp_path / "w.safetensors").exists()


@pytest.mark.parametrize("path, reason", [(".", "is a directory, not a weights file"),
                                          ("/dev/null", "not a regular file"),
                                          ("nope.safetensors", "no such weights file")])
def test_a_weights_path_that_is_not_a_file_says_what_it_is(tmp_path, path, reason):
    with pytest.raises(WeightsError, match=reason):
        refpose.read_weights(tmp_path / path)


def test_an_npz_that_unpacks_beyond_the_limit_is_refused_before_unpacking(tmp_path, monkeypatch, tiny_tensors):
    """A compressed .npz of zeros is a zip bomb: ~1000x smaller on disk than in memory."""
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, big=np.zeros(10 ** 6, np.float32))      # 4 MB unpacked, a few KB packed
    assert path.stat().st_size < 100_000
    import refpose.weights as weights
    monkeypatch.setattr(weights, "MAX_WEIGHTS_BYTES", 10 ** 6)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("unpacked"))
    with pytest.raises(WeightsError, match=r"unpacks to 4,000,\d+ bytes"):
        refpose.read_weights(path)

