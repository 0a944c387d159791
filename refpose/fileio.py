"""Output files are written whole or not at all."""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_files(files: "dict[str | os.PathLike, bytes]") -> None:
    """Write every file to a new temporary name beside it, then rename them all into place.

    A reader (or a crash) never sees a half-written file, and when one write fails none of
    the files is replaced. Folders are created as needed; the files get the mode the umask gives.
    """
    temps = {}
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
            temps[path] = tmp
            with open(tmp, "xb") as f:          # a new file: never someone else's
                f.write(data)
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_atomic(path: "str | os.PathLike", data: bytes) -> None:
    """Write one file whole or not at all (see `write_files`)."""
    write_files({path: data})
