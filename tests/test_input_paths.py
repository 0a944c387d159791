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


def _as_nobody(*args, **kwargs):
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *args],
                          capture_output=True, text=True, cwd="/", timeout=300, **kwargs)


def _skip_unless_nobody_imports_refpose():
    """Skip, saying why, when uid nobody cannot run this interpreter or import refpose from this
    checkout: a checkout (or a venv) in a folder other users cannot enter, such as a 0700 home or
    a `mktemp -d` folder, where the probe fails before it can test anything."""
    p = _as_nobody(sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import refpose; "
                   "print(refpose.__file__)", str(ROOT))
    found = p.stdout.strip()
    if p.returncode != 0 or not found.startswith(str(ROOT / "refpose")):
        why = (p.stderr.strip().splitlines() or ["no output"])[-1] if p.returncode else f"it imports {found} instead"
        pytest.skip(f"uid {NOBODY} cannot import refpose from {ROOT} with {sys.executable} (a folder on the way "
                    f"is closed to other users, e.g. a 0700 home): {why[:200]}")


@pytest.fixture
def locked_as_nobody():
    """(base, probe output): base/locked (mode 000) holds a.png; the probe runs as uid nobody."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root, to run the probe as an unprivileged user (root reads any folder)")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run as an unprivileged user")
    _skip_unless_nobody_imports_refpose()
    base = Path(tempfile.mkdtemp(prefix="refpose-perm-"))
    try:
        base.chmod(0o755)
        (base / "locked").mkdir()
        _image(base / "locked" / "a.png")
        (base / "locked").chmod(0o000)
        p = _as_nobody(sys.executable, "-c", PROBE, str(ROOT), str(base))
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


# --- named pipes: refused in one line, never waited on (issue 23, item 4) -----------------------------
def refpose_cli(*argv, timeout=180):
    """`python -m refpose ARGV` in a subprocess: (status, stdout, stderr). Opening a named pipe for
    reading blocks until someone writes to it, in C and C++ readers too (ONNX Runtime, FFmpeg,
    safetensors), where no signal interrupts it: a hang fails the test at `timeout` instead."""
    p = subprocess.run([sys.executable, "-m", "refpose", *argv], capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def fifo_files(tmp_path):
    import refpose
    from coco_files import run_gt, write

    d = tmp_path / "in"
    d.mkdir()
    _image(d / "b.png")
    os.mkfifo(d / "a.jpg")
    for name in ("fifo.json", "fifo.onnx", "fifo.safetensors", "fifo.mat", "fifo.pt", "fifo.mp4"):
        os.mkfifo(tmp_path / name)
    refpose.save_weights(tmp_path / "w.safetensors", refpose.init_weights("tiny", 0), "tiny", trained=False)
    gt = run_gt()
    write(tmp_path / "gt.json", gt)
    (tmp_path / "images").mkdir()
    for img in gt["images"][1:]:
        cv2.imwrite(str(tmp_path / "images" / img["file_name"]), np.zeros((img["height"], img["width"], 3), np.uint8))
    os.mkfifo(tmp_path / "images" / gt["images"][0]["file_name"])
    (tmp_path / "mpii.json").write_text(json.dumps([{"image": "a.jpg", "center": [50, 60], "scale": 1.5,
                                                     "joints": [[0, 0]] * 16, "joints_vis": [1] * 16}]))
    return tmp_path


@pytest.mark.parametrize("argv, status, words", [
    (["infer", "{t}/in", "--config", "tiny", "--out", "{t}/out"], 1, "{t}/in/a.jpg: a named pipe (FIFO), not a regular file"),
    (["infer", "{t}/in/b.png", "--config", "tiny", "--detector", "{t}/fifo.onnx", "--out", "{t}/out"], 2,
     "{t}/fifo.onnx: a named pipe (FIFO), not a regular file"),
    (["infer", "{t}/in/b.png", "--weights", "{t}/fifo.safetensors", "--out", "{t}/out"], 2, "a named pipe (FIFO)"),
    (["infer", "{t}/in/b.png", "--config", "tiny", "--boxes", "{t}/fifo.json", "--out", "{t}/out"], 2, "a named pipe"),
    (["infer", "{t}/fifo.mp4", "--config", "tiny", "--out", "{t}/out"], 2, "{t}/fifo.mp4: a named pipe (FIFO)"),
    (["eval", "--ann", "{t}/fifo.json", "--images", "{t}/images", "--config", "tiny"], 2, "fifo.json: a named pipe"),
    (["eval", "--ann", "{t}/gt.json", "--results", "{t}/fifo.json"], 2, "fifo.json: a named pipe (FIFO)"),
    (["eval", "--metric", "pckh", "--ann", "{t}/mpii.json", "--gt", "{t}/fifo.mat", "--results", "{t}/mpii.json"],
     2, "fifo.mat: a named pipe (FIFO), not a regular file"),
    (["export", "{t}/fifo.pt", "{t}/out/w.safetensors"], 2, "fifo.pt: a named pipe (FIFO), not a regular file"),
    (["oracle", "dump", "{t}/fifo.safetensors", "{t}/out/g.npz"], 2, "fifo.safetensors: a named pipe (FIFO)"),
    (["info", "--weights", "{t}/fifo.safetensors"], 2, "fifo.safetensors: a named pipe (FIFO)"),
])
def test_a_named_pipe_as_any_input_is_one_line(fifo_files, argv, status, words):
    """A FIFO in an input folder, as --detector or as --ann hung forever, and nothing was written,
    not even for the regular images beside it."""
    t = str(fifo_files)
    if argv[0] == "export":
        pytest.importorskip("torch", reason="export reads PyTorch files")
    if "pckh" in argv:
        pytest.importorskip("scipy", reason="the MPII .mat is read with scipy")
    code, _, stderr = refpose_cli(*[a.format(t=t) for a in argv])
    err = [line for line in stderr.splitlines() if "warning" not in line]
    assert code == status
    assert len(err) == 1 and words.format(t=t) in err[0], err
    if argv[0] == "infer" and code == 1:                 # the regular image beside the pipe was run
        assert sorted(os.listdir(fifo_files / "out")) == ["b.pose.json", "b.pose.png"]


def test_a_named_pipe_among_the_annotated_images_is_missing_and_the_rest_scored(fifo_files):
    t = fifo_files
    code, out, err = refpose_cli("eval", "--ann", str(t / "gt.json"), "--images", str(t / "images"), "--weights",
                                 str(t / "w.safetensors"), "--results-out", str(t / "out" / "r.json"))
    assert code == 2
    assert f"refpose eval: {t}/images/000000000102.jpg: a named pipe (FIFO), not a regular file\n" in err
    assert "images: 2 of 3 scored" in out and (t / "out" / "r.json").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv, to run the probe as an unprivileged user")
def test_a_checkout_other_users_cannot_enter_skips_the_permission_test_with_its_reason():
    """The test above, run from a checkout in a 0700 folder (where the README's test command runs
    for a newcomer in their home): was 1 error (ModuleNotFoundError as uid nobody), now a skip.

    The checkout is copied into a `mktemp -d` folder and its tests run by a plain interpreter that
    finds the dependencies on PYTHONPATH only, so that refpose is importable from that copy and
    from nowhere else (an editable install would otherwise point uid nobody at this checkout)."""
    v = sys.version_info
    python = shutil.which(f"python{v.major}.{v.minor}", path="/usr/local/bin:/usr/bin:/bin")
    deps = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path(tempfile.gettempdir())), "PYTHONPATH": os.pathsep.join(deps),
           "OMP_WAIT_POLICY": "PASSIVE"}
    if python is None or subprocess.run([python, "-c", "import numpy, numba, cv2, pytest"], env=env,
                                        capture_output=True).returncode != 0:
        pytest.skip(f"no plain Python {v.major}.{v.minor} that runs with this environment's packages")
    closed = Path(tempfile.mkdtemp(prefix="refpose-closed-"))          # mode 0700, as mktemp -d makes it
    try:
        shutil.copytree(ROOT / "refpose", closed / "refpose", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "tests", closed / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "setup.cfg", closed / "setup.cfg")
        p = subprocess.run([python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                            "tests/test_input_paths.py::test_a_folder_that_cannot_be_read_or_entered"],
                           capture_output=True, text=True, cwd=closed, env=env, timeout=600)
    finally:
        shutil.rmtree(closed)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "1 skipped" in p.stdout and f"uid {NOBODY} cannot import refpose from {closed}" in p.stdout, p.stdout[-3000:]
