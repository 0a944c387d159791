"""The `refpose` command's model commands (refpose/cli/models.py: info, init, export) and the
help of every registered command, DESIGN section 5.

In process through `refpose.cli.main([...])`; one test runs the installed `refpose` script.
Bad input must give exit status 2 and exactly one line on stderr, no traceback, no file.
"""
import argparse
import json
import shutil
import subprocess

import numpy as np
import pytest

import refpose
from refpose.cli import build_parser, main


def run(capsys, *argv):
    """(exit status, stdout, stderr) of `refpose argv...`, run in process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:            # argparse: --help, --version, usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, command, *mentions):
    assert code == 2
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    assert err.startswith(f"refpose {command}: error: "), err
    assert "Traceback" not in err
    for m in mentions:
        assert m in err, (m, err)
    assert out == ""


# --- info ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_info_json_for_wgnet(capsys):
    code, out, err = run(capsys, "info", "--config", "wgnet", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert {"config", "params", "macs", "input"} <= set(s)
    # DESIGN section 1, "Reference sizes"
    assert s["config"] == "wgnet"
    assert s["params"] == 5_719_154
    assert s["macs"] == 3_590_865_920
    assert s["input"] == [256, 192]


def test_info_json_for_tiny(capsys):
    code, out, err = run(capsys, "info", "--config", "tiny", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert {"config", "params", "macs", "input"} <= set(s)
    assert s["config"] == "tiny" and s["input"] == [128, 96] and s["output"] == [17, 32, 24]
    # the figures are the model's: its parameters, and the MACs counted while it runs
    model = refpose.build("tiny", impl="reference")
    with refpose.count_ops() as c:
        model(np.zeros((1, 3, 128, 96), np.float32))
    assert (s["params"], s["macs"]) == (model.num_params, c.macs)


def test_info_text_names_the_flop_convention_and_every_stage(capsys):
    code, out, err = run(capsys, "info", "--config", "tiny")
    assert code == 0, err
    assert "1 FLOP = 1 multiply-accumulate" in out              # DESIGN section 2: say so in every table
    rows = [line.split()[0] for line in out.splitlines() if line.split()]
    for stage in ("stem", "s1", "s2", "s3", "s4", "d1", "d2", "d3", "head"):
        assert stage in rows, stage
    code, js, _ = run(capsys, "info", "--config", "tiny", "--json")
    assert f"params {json.loads(js)['params']:,}" in out


def test_info_at_another_input_size(capsys):
    # tiny at 256x96: every window still divides its map (see test_model.py); output H/4 x W/4
    code, out, err = run(capsys, "info", "--config", "tiny", "--input", "256x96", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["input"] == [256, 96] and s["output"] == [17, 64, 24]


def test_info_unknown_config(capsys):
    assert_one_line_error(*run(capsys, "info", "--config", "wgnet-z"), "info", "'wgnet-z'", "wgnet")


@pytest.mark.parametrize("size, mentions", [("250x192", ["250x192", "32"]), ("256x190", ["256x190", "32"]),
                                            ("big", ["'big'", "256x192"]), ("0x0", ["0x0"])])
def test_info_bad_input_size(capsys, size, mentions):
    assert_one_line_error(*run(capsys, "info", "--config", "wgnet", "--input", size), "info", *mentions)


def test_info_needs_a_config_or_weights(capsys):
    assert_one_line_error(*run(capsys, "info"), "info", "--config")


def test_info_missing_weights_file(capsys, tmp_path):
    missing = tmp_path / "none.safetensors"
    assert_one_line_error(*run(capsys, "info", "--weights", missing), "info", str(missing))


# --- init ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_init_writes_seeded_untrained_weights(capsys, tmp_path, suffix):
    out = tmp_path / f"tiny{suffix}"
    code, _, err = run(capsys, "init", "--config", "tiny", "--seed", 3, out)
    assert code == 0, err
    wf = refpose.read_weights(out)
    assert wf.trained is False                               # DESIGN section 3: metadata trained: false
    assert wf.config == refpose.get_config("tiny")
    want = refpose.init_weights("tiny", seed=3)              # "seeded": the same seed, the same tensors
    assert set(wf.tensors) == set(want)
    for k in want:
        np.testing.assert_array_equal(wf.tensors[k], want[k])
    # and `info --weights` reads it back
    code, js, err = run(capsys, "info", "--weights", out, "--json")
    assert code == 0, err
    s = json.loads(js)
    assert s["config"] == "tiny" and s["trained"] is False


def test_init_unknown_config_writes_nothing(capsys, tmp_path):
    out = tmp_path / "x.safetensors"
    assert_one_line_error(*run(capsys, "init", "--config", "nope", out), "init", "'nope'")
    assert list(tmp_path.iterdir()) == []


# --- export (needs torch) ------------------------------------------------------------------------
@pytest.mark.torch
def test_export_round_trip(capsys, tmp_path):
    torch = pytest.importorskip("torch", reason="export reads a PyTorch checkpoint")
    from refpose.porting.twin import WGNetTwin

    twin = WGNetTwin("tiny")
    ckpt = tmp_path / "tiny.pt"
    torch.save(twin.state_dict(), ckpt)
    out = tmp_path / "tiny.safetensors"
    code, stdout, err = run(capsys, "export", ckpt, out)
    assert code == 0, err
    wf = refpose.read_weights(out)
    assert wf.trained is True and wf.config.name == "tiny"
    for k, v in twin.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(wf.tensors[k], v.numpy())


def test_export_missing_checkpoint(capsys, tmp_path):
    pytest.importorskip("torch", reason="export needs PyTorch; without it the error is a different one")
    missing, out = tmp_path / "none.pt", tmp_path / "out.safetensors"
    assert_one_line_error(*run(capsys, "export", missing, out), "export", str(missing))
    assert not out.exists()


# --- help of every registered command ------------------------------------------------------------
def command_paths(parser, prefix=()):
    """Every command path (`info`, `oracle dump`, ...) of the parser, found by walking its subparsers."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from command_paths(sub, prefix + (name,))


COMMANDS = list(command_paths(build_parser()))


def test_the_model_commands_are_registered():
    assert {("info",), ("init",), ("export",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_of_every_command(capsys, path):
    code, out, err = run(capsys, *path, "--help")
    assert code == 0, err
    assert out.startswith("usage:")
    assert "refpose " + " ".join(path) in out
    assert err == ""


def test_top_level_help_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for path in COMMANDS:
        if len(path) == 1:
            assert path[0] in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"refpose {refpose.__version__}"


def test_unknown_command(capsys):
    code, out, err = run(capsys, "frobnicate")
    assert code == 2 and err.count("\n") == 1 and "frobnicate" in err


# --- the installed script ------------------------------------------------------------------------
def test_installed_script_runs_info():
    exe = shutil.which("refpose")
    if exe is None:
        pytest.skip("the refpose script is not on PATH (package not installed)")
    p = subprocess.run([exe, "info", "--config", "tiny", "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["config"] == "tiny" and s["input"] == [128, 96]
    assert s["params"] == refpose.build("tiny").num_params    # the script runs this package's code


@pytest.mark.torch
def test_export_of_a_checkpoint_that_unpacks_beyond_the_limit_is_refused_before_unpacking(capsys, tmp_path,
                                                                                        monkeypatch):
    """A .pt holding a 100M-element tensor deflated to 390 KB: `refpose export` peaked at 637 MB
    (1000:1). The zip's declared sizes are read first (fileio.unpacked_size), as for .npz."""
    torch = pytest.importorskip("torch", reason="export reads a PyTorch checkpoint")
    import zipfile

    import refpose.porting.twin as twin

    plain, bomb = tmp_path / "plain.pt", tmp_path / "bomb.pt"
    torch.save({"head.weight": torch.zeros(10 ** 6)}, plain)                      # 4 MB of zeros
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert bomb.stat().st_size < 100_000
    monkeypatch.setattr(twin, "MAX_WEIGHTS_BYTES", 10 ** 6)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("unpacked"))
    code, stdout, err = run(capsys, "export", bomb, tmp_path / "z.safetensors")
    assert code == 2 and stdout == ""
    assert err.startswith(f"refpose export: error: {bomb}: unpacks to 4,00") and err.count("\n") == 1
    assert "more than the 1,000,000 a PyTorch checkpoint of refpose needs" in err
    assert not (tmp_path / "z.safetensors").exists()
