"""Where the Numba kernels are cached (refpose/ops/jitcache.py): refpose runs from a read-only
install as a user whose home is not writable, caches in a private per-user folder, honours a
usable NUMBA_CACHE_DIR, and compiles in memory (one warning) when nothing is writable.

The end-to-end tests install refpose (not editable) into a folder made read-only and run it as
an unprivileged uid through `setpriv`; they need root and an interpreter that uid can run.
"""
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from refpose.ops import jitcache

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cameraman.jpg"
NOBODY = 65534                                 # the conventional uid/gid of `nobody`
FORWARD = ("import numpy as np, refpose; "
           "m = refpose.build('tiny'); y = m(np.zeros((1, 3, 128, 96), np.float32)); "
           "print(refpose.__file__, y.shape)")


# --- the private folder and the locator, in process ---------------------------------------------
@pytest.fixture
def tempdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_private_folder_is_made_private(tempdir):
    path = jitcache.private_temp_dir()
    assert path == str(tempdir / f"refpose-numba-{os.geteuid()}")
    assert stat.S_IMODE(os.lstat(path).st_mode) & 0o077 == 0


def test_a_folder_others_can_write_is_refused(tempdir):
    path = tempdir / f"refpose-numba-{os.geteuid()}"
    path.mkdir()
    path.chmod(0o777)
    assert jitcache.private_temp_dir() is None


def test_a_symlink_is_refused(tempdir):
    (tempdir / "elsewhere").mkdir(mode=0o700)
    (tempdir / f"refpose-numba-{os.geteuid()}").symlink_to(tempdir / "elsewhere")
    assert jitcache.private_temp_dir() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a folder to another owner")
def test_someone_elses_folder_is_refused(tempdir):
    path = tempdir / f"refpose-numba-{os.geteuid()}"
    path.mkdir(mode=0o700)
    os.chown(path, NOBODY, NOBODY)
    assert jitcache.private_temp_dir() is None


def test_locator_serves_refpose_files_only(tempdir):
    kernels = Path(jitcache.__file__).with_name("kernels.py")
    loc = jitcache.PrivateTempCacheLocator.from_function(jitcache._probe, str(kernels))
    assert loc is not None and loc.get_cache_path().startswith(str(tempdir / f"refpose-numba-{os.geteuid()}"))
    assert jitcache.PrivateTempCacheLocator.from_function(jitcache._probe, tempfile.__file__) is None


# --- end to end: a read-only install run by an unprivileged user --------------------------------
def _as_nobody(python, env, *args, cwd="/"):
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           "env", "-i", *(f"{k}={v}" for k, v in env.items()), python, *args],
                          capture_output=True, text=True, cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def readonly_install():
    """(python, env, base): refpose pip-installed (not editable) into a read-only folder under
    `base`, and an interpreter plus PYTHONPATH with which uid `nobody` imports it from there."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root, to run refpose as an unprivileged user")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run as an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="refpose-ro-"))
    base.chmod(0o755)
    try:
        target = base / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(ROOT)], check=True, capture_output=True, timeout=600)
        for d, dirs, files in os.walk(target):
            for name in files:
                os.chmod(os.path.join(d, name), 0o444)
            os.chmod(d, 0o555)
        deps = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
        env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PYTHONPATH": os.pathsep.join([str(target)] + deps)}
        # the venv's interpreter may sit in a folder only root can enter: take the first one nobody can run
        v = sys.version_info
        name = f"python{v.major}.{v.minor}"
        for python in (sys.executable, shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")):
            if python:
                p = _as_nobody(python, env, "-c", "import numba, cv2, refpose; print(refpose.__file__)")
                if p.returncode == 0 and p.stdout.startswith(str(target)):
                    yield python, env, base
                    return
        pytest.skip(f"no Python {v.major}.{v.minor} interpreter that an unprivileged user can run")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _scratch(base, name, mode=0o1777):
    """A fresh folder under `base` with `mode` (world-writable and sticky, like /tmp, by default)."""
    d = base / name
    d.mkdir()
    d.chmod(mode)
    return d


def _cached(folder):
    return sorted(p.name for p in Path(folder).rglob("*.nbi"))


def test_readonly_install_caches_in_a_private_folder(readonly_install):
    """No writable package folder or home, NUMBA_CACHE_DIR unwritable: `refpose info`, a forward and
    `refpose infer` run, the kernels are cached in nobody's private temporary folder, and the
    unusable NUMBA_CACHE_DIR is reported (failure 1 of the issue: 'no locator available')."""
    python, env, base = readonly_install
    tmp = _scratch(base, "tmp1")
    unwritable = _scratch(base, "numba-cache-root", 0o755)
    env = dict(env, TMPDIR=str(tmp), NUMBA_CACHE_DIR=str(unwritable))
    p = _as_nobody(python, env, "-c", FORWARD)
    assert p.returncode == 0, p.stderr
    assert "(1, 17, 32, 24)" in p.stdout
    assert f"NUMBA_CACHE_DIR={unwritable} is not a writable folder" in p.stderr
    private = tmp / f"refpose-numba-{NOBODY}"
    assert any(n.startswith("kernels.") for n in _cached(private)), sorted(tmp.rglob("*"))
    assert stat.S_IMODE(private.stat().st_mode) == 0o700

    out = _scratch(base, "out1")
    main = "import sys; from refpose.cli import main; sys.exit(main())"
    p = _as_nobody(python, env, "-c", main, "info", "--config", "tiny")
    assert p.returncode == 0 and "params" in p.stdout, p.stderr
    p = _as_nobody(python, env, "-c", main, "infer", str(EXAMPLE), "--config", "tiny", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and (out / "cameraman.pose.json").exists()
    assert not _cached(unwritable)


@pytest.mark.slow
def test_readonly_install_honours_a_usable_numba_cache_dir(readonly_install):
    python, env, base = readonly_install
    tmp, cache = _scratch(base, "tmp2"), _scratch(base, "numba-cache-nobody")
    p = _as_nobody(python, dict(env, TMPDIR=str(tmp), NUMBA_CACHE_DIR=str(cache)), "-c", FORWARD)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert any(n.startswith("kernels.") for n in _cached(cache))
    assert not _cached(tmp)


@pytest.mark.slow
def test_nothing_writable_compiles_in_memory(readonly_install):
    """The private folder exists but belongs to root: nothing is usable; one warning, then it runs."""
    python, env, base = readonly_install
    tmp = _scratch(base, "tmp3")
    (tmp / f"refpose-numba-{NOBODY}").mkdir(mode=0o700)             # root's: refused
    p = _as_nobody(python, dict(env, TMPDIR=str(tmp)), "-c", FORWARD)
    assert p.returncode == 0, p.stderr
    assert "(1, 17, 32, 24)" in p.stdout
    assert "kernels are compiled in memory" in p.stderr
    assert not _cached(tmp)
