"""What `refpose.cli.main` does for every command: a closed output pipe ends the command quietly
(exit 141, as a program ended by SIGPIPE), and a warning is one line on stderr."""
import os
import subprocess
import sys
import warnings

import pytest

from refpose.cli import EXIT_BROKEN_PIPE, main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_into_closed_pipe(*argv):
    """Run `refpose argv...` with stdout a pipe whose reading end is already closed."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-c", "import sys; from refpose.cli import main; sys.exit(main())",
                               *argv], stdout=w, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=300)
    finally:
        os.close(w)


def test_closed_pipe_exits_quietly():
    """`refpose info --config tiny | head -1` (was a BrokenPipeError traceback)."""
    p = run_into_closed_pipe("info", "--config", "tiny")
    assert p.returncode == EXIT_BROKEN_PIPE == 141
    assert p.stderr == ""


def test_closed_pipe_for_help():
    # argparse itself ignores a failed write of the help (status 0); what matters is the silence
    p = run_into_closed_pipe("info", "--help")
    assert p.returncode in (0, 141) and p.stderr == ""


def test_a_warning_is_one_line(capsys, monkeypatch):
    def run(args):
        warnings.warn("something to know", RuntimeWarning)
        print("done")
        return 0

    import refpose.cli.models as models
    monkeypatch.setattr(models, "run_info", run)            # main() builds its parser afresh
    assert main(["info", "--config", "tiny"]) == 0
    out, err = capsys.readouterr()
    assert out == "done\n"
    assert err == "refpose info: warning: something to know\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_standard_output_on_a_full_disk_is_one_line():
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-c", "import sys; from refpose.cli import main; sys.exit(main())",
                            "info", "--config", "tiny"], stdout=full, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                           timeout=300)
    assert p.returncode == 2
    assert p.stderr == "refpose info: error: No space left on device\n"


def test_standard_output_closed_is_no_traceback():
    p = subprocess.run([sys.executable, "-c", "import os, sys; os.close(1); sys.stdout = None; "
                        "from refpose.cli import main; sys.exit(main())", "info", "--config", "tiny"],
                       stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0 and p.stderr == ""


# --- SIGTERM and file names the terminal cannot show (issue 23, items 6 and 21) -------------------
def _video(path, frames: int, size=(64, 48)):
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()


def test_sigterm_removes_the_temporary_files_and_exits_143(tmp_path):
    """`kill PID` during `refpose infer clip --out out` left .clip.pose.<hex>.tmp.mp4 and .jsonl."""
    import signal
    import time

    _video(tmp_path / "clip.avi", 400)
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", "import sys; from refpose.cli import main; sys.exit(main())",
                          "infer", str(tmp_path / "clip.avi"), "--config", "tiny", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not (out.exists() and any(name.endswith(".tmp.mp4") for name in os.listdir(out))):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.01)
    time.sleep(0.3)                                    # into the frames
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "refpose infer: terminated (SIGTERM)" and "Traceback" not in stderr
    assert os.listdir(out) == []                       # no temporary file, no half-written output


def test_a_file_name_that_is_not_utf8_is_printed_escaped(tmp_path):
    """A name with undecodable bytes and a strict ASCII stdout: was a UnicodeEncodeError that
    abandoned the rest of the batch."""
    import cv2
    import numpy as np

    folder = tmp_path / "in"
    folder.mkdir()
    ok, png = cv2.imencode(".png", np.full((40, 30, 3), 120, np.uint8))
    for name in (b"\xff\xfe.png", b"b.png", "é.png".encode()):
        with open(os.path.join(os.fsencode(folder), name), "wb") as f:
            f.write(png.tobytes())
    env = dict(os.environ, PYTHONIOENCODING="ascii:strict")
    p = subprocess.run([sys.executable, "-c", "import sys; from refpose.cli import main; sys.exit(main())",
                        "infer", str(folder), "--config", "tiny", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"{folder}/\\xff\\xfe.png: 1 person -> " in p.stdout
    assert f"{folder}/\\xe9.png: 1 person -> " in p.stdout and f"{folder}/b.png: 1 person" in p.stdout
    assert len(os.listdir(tmp_path / "out")) == 6
