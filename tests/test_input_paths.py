"""Input folders and links: a folder that cannot be read or entered, broken links and link
loops are reported with their real reason (never a traceback, never skipped in silence, never
"no such file" for a file that is there)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from refpose.pose.files import collect_inputs as collect_images
from refpose.errors import ImageError
from refpose.pose.imageio import path_problem, read_image

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534


def _image(path):
    cv2.imwrite(str(path), np.full((20, 16, 3), 100, np.uint8))


@pytest.fixture
def linked(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _image(d / "a.png")
    (d / "broken.png").symlink_to("nowhere.png")
    (d / "loop.jpg").symlink_to("loop.jpg")
    (d / "folder.png").mkdir()                  # a folder with an image's name is not an input
    return d


def test_links_in_a_folder_are_inputs_reported_with_their_reason(linked):
    jobs, problems = collect_images([str(linked)])
    assert problems == []
    assert jobs == [str(linked / n) for n in ("a.png", "broken.png", "loop.jpg")]
    assert read_image(jobs[0]).shape == (20, 16, 3)
    with pytest.raises(ImageError, match=r"broken.png: broken symbolic link \(to nowhere.png\)$"):
        read_image(jobs[1])
    with pytest.raises(ImageError, match="loop.jpg: symbolic link loop$"):
        read_image(jobs[2])


def test_path_problem_names_each_cause(tmp_path, linked):
    assert path_problem(linked / "a.png") is None and path_problem(linked, folder=True) is None
    assert path_problem(tmp_path / "nope.png") == "no such file"
    assert path_problem(tmp_path / "nope", folder=True) == "no such folder"
    assert path_problem(linked / "a.png", folder=True) == "not a folder"
    assert path_problem(linked / "folder.png") == "is a directory, not an image"


# --- permissions: seen only by a user who is not root ---------------------------------------------
PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from refpose.pose.files import collect_inputs as collect_images
from refpose.errors import RefposeError
from refpose.data.evaluate import check_image_folder
from refpose.pose.imageio import read_image
base = sys.argv[2]
out = {"collect": collect_images([base + "/locked"])}
for key, call in (("read", lambda: read_image(base + "/locked/a.png")),
                  ("eval", lambda: check_image_folder(base + "/locked"))):
    try:
        call()
        out[key] = None
    except RefposeError as e:
        out[key] = str(e)
print(json.dumps(out))
"""


@pytest.fixture
def locked_as_nobody():
    """(base, probe output): base/locked (mode 000) holds a.png; the probe runs as uid nobody."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root, to run the probe as an unprivileged user (root reads any folder)")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run as an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="refpose-perm-"))
    try:
        base.chmod(0o755)
        (base / "locked").mkdir()
        _image(base / "locked" / "a.png")
        (base / "locked").chmod(0o000)
        p = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                            sys.executable, "-c", PROBE, str(ROOT), str(base)],
                           capture_output=True, text=True, cwd="/", timeout=300)
        if p.returncode != 0 and "Permission denied" in p.stderr and "refpose" not in p.stderr:
            pytest.skip(f"uid {NOBODY} cannot run this interpreter: {p.stderr.strip()[:200]}")
        assert p.returncode == 0, p.stderr
        yield base, json.loads(p.stdout)
    finally:
        (base / "locked").chmod(0o755)
        shutil.rmtree(base)


def test_a_folder_that_cannot_be_read_or_entered(locked_as_nobody):
    base, out = locked_as_nobody
    locked = f"{base}/locked"
    assert out["collect"] == [[], [f"{locked}: cannot list this directory: permission denied: "
                                   "the folder cannot be read"]]
    assert out["read"] == f"{locked}/a.png: permission denied: a folder on its path cannot be entered"
    assert out["eval"] == f"{locked}: cannot use as the image directory: permission denied: the folder cannot be read"
