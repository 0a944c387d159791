"""The --ray options of `refpose infer` and `refpose eval` (refpose/cli/cluster.py): bad input is one
line and status 2, before any Ray instance starts and with nothing written."""
import socket
import sys
import time
from pathlib import Path

import pytest

from refpose.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cameraman.jpg"


def run(args, capfd):
    try:
        code = main(list(map(str, args)))
    except SystemExit as e:                  # a usage error (argparse)
        code = e.code
    out, err = capfd.readouterr()
    return code, out, err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["--workers", "2"], "--workers goes with --ray"),
    (["--threads", "2", "--draw"], "--threads, --draw go with --ray"),
    (["--ray", "local", "--json"], "--json does not go with --ray"),
    (["--ray", "local"], "--ray needs --out DIR"),
    (["--ray", "nowhere"], "expected local, auto, HOST:PORT or ray://HOST:PORT"),
    (["--ray", "local", "--workers", "3-1"], "expected a number of workers N or a range MIN-MAX"),
])
def test_infer_option_mistakes(tmp_path, capfd, args, message):
    code, out, err = run(["infer", EXAMPLE, "--weights", "tiny-synthetic", *args], capfd)
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_without_ray_installed_one_line_names_the_extra(tmp_path, capfd, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)          # `import ray` raises ImportError
    out = tmp_path / "out"
    code, _, err = run(["infer", EXAMPLE, "--weights", "tiny-synthetic", "--ray", "local", "--out", out], capfd)
    assert code == 2 and err.splitlines() == ["refpose infer: error: --ray needs Ray Data, which is not installed: "
                                              "pip install 'refpose[ray]' (the ray extra)"]
    assert not out.exists()
    code, _, err = run(["eval", "--ann", tmp_path / "gt.json", "--images", tmp_path, "--ray", "local"], capfd)
    assert code == 2 and "(the ray extra)" in err and len(err.splitlines()) == 1


def test_an_unreachable_address_is_one_line_within_the_time_out(tmp_path, capfd):
    pytest.importorskip("ray", reason="needs the ray extra")
    out, port = tmp_path / "out", closed_port()
    start = time.perf_counter()
    code, _, err = run(["infer", EXAMPLE, "--weights", "tiny-synthetic", "--ray", f"127.0.0.1:{port}", "--out", out],
                       capfd)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"127.0.0.1:{port}: cannot reach a Ray cluster there within 15 s" in err
    assert time.perf_counter() - start < 20 and not out.exists()


def test_eval_workers_range_needs_ray(tmp_path, capfd):
    code, _, err = run(["eval", "--ann", tmp_path / "gt.json", "--images", tmp_path, "--workers", "1-3"], capfd)
    assert code == 2 and "--workers MIN-MAX goes with --ray" in err


def test_ray_is_imported_only_with_the_option():
    import subprocess

    code = ("import sys\nfrom refpose.cli import build_parser\n"
            "build_parser().parse_args(['infer', 'x.jpg'])\nimport refpose.cluster.session, refpose.cluster.infer\n"
            "print('ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ["False"], r.stderr
