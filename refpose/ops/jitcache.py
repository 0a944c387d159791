"""Where Numba caches the compiled kernels, so that refpose runs from any install.

Numba (`numba.core.caching`) tries, in order: `NUMBA_CACHE_DIR`, the `__pycache__` folder
beside the source, and a per-user folder under the home directory (`~/.cache/numba`), and
raises `RuntimeError: cannot cache function ...: no locator available` when none of them is
writable: a system-wide install run by a user whose home is not writable (a container, a CI
runner) could not run a forward at all. This module adds two things:

- a last locator, for refpose's own files only: a private per-user folder in the temporary
  directory (`refpose-numba-<uid>`, mode 0700). Cached machine code is executed, so the folder
  is used only when it is a real directory owned by this user that nobody else can write;
- `cache_kernels(py_file)`, which the kernels module asks once, before its kernels are
  decorated: False when no locator can serve the file, after a one-line warning; the
  kernels are then compiled in memory in each process, which costs time but nothing else.

A `NUMBA_CACHE_DIR` that is not writable is reported (Numba itself passes over it silently).
The hooks used are Numba's internal locator classes (`_CacheLocator`,
`CacheImpl._locator_classes` in `numba.core.caching`), as of Numba 0.68.
"""
from __future__ import annotations

import os
import stat
import tempfile
import warnings

from numba.core import caching
from numba.core import config as numba_config

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))     # .../refpose


def private_temp_dir() -> str | None:
    """This user's cache folder in the temporary directory, created if needed; None when it
    cannot be created or is not private (someone else's, a symlink, writable by others)."""
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    path = os.path.join(tempfile.gettempdir(), f"refpose-numba-{uid if uid is not None else 'user'}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    if uid is not None and (st.st_uid != uid or st.st_mode & 0o022):
        return None
    return path


class PrivateTempCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """Numba cache locator of last resort, for functions defined in refpose's own files."""

    def __init__(self, py_func, py_file, root):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(root, self.get_suitable_cache_subpath(py_file))

    def get_cache_path(self):
        return self._cache_path

    @classmethod
    def from_function(cls, py_func, py_file):
        if not os.path.abspath(py_file).startswith(PACKAGE_DIR + os.sep):
            return None                       # other packages keep Numba's own rules
        root = private_temp_dir()
        if root is None or not os.path.exists(py_file):
            return None
        self = cls(py_func, py_file, root)
        try:
            self.ensure_cache_path()
        except OSError:
            return None
        return self


def _probe():
    """A stand-in function for asking the locators about a file (they read only its line number)."""


def _register() -> None:
    """Append the private locator to Numba's list, once (it runs after Numba's own)."""
    if PrivateTempCacheLocator not in caching.CacheImpl._locator_classes:
        caching.CacheImpl._locator_classes.append(PrivateTempCacheLocator)


def cache_kernels(py_file: str) -> bool:
    """True when Numba can cache the kernels defined in `py_file` on disk; else warn once, False."""
    _register()
    if getattr(numba_config, "CACHE_LOCATOR_CLASSES", None):   # the user chose them (Numba >= 0.62)
        return True
    unusable = ""
    if numba_config.CACHE_DIR and caching.UserProvidedCacheLocator.from_function(_probe, py_file) is None:
        unusable = f"NUMBA_CACHE_DIR={numba_config.CACHE_DIR} is not a writable folder; "
    if any(cls.from_function(_probe, py_file) is not None for cls in caching.CacheImpl._locator_classes):
        if unusable:
            warnings.warn(unusable + "the kernels are cached in another folder", RuntimeWarning, stacklevel=2)
        return True
    warnings.warn(unusable + "no writable folder for Numba's cache (NUMBA_CACHE_DIR, the package folder, the home "
                  "folder, the temporary folder): the kernels are compiled in memory, in every run",
                  RuntimeWarning, stacklevel=2)
    return False
