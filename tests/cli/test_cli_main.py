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
