"""Files in and out: outputs written whole or not at all; JSON inputs read and their numbers checked."""
from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path

from .errors import DataError, OutputError


def write_files(files: "dict[str | os.PathLike, bytes]") -> None:
    """Write every file to a new temporary name beside it, then rename them all into place.

    A reader (or a crash) never sees a half-written file, and the files are committed together
    or not at all: every path is checked first (`check_output_path`), every file is written in
    full before the first rename, and when a rename still fails (the folder changed meanwhile)
    the files already renamed are put back as they were (their old contents were kept under a
    second name, a hard link). The window left: a crash or a kill between the first and the
    last rename, a few system calls long, leaves the new files of those renamed so far.
    Folders are created as needed; the files get the mode the umask gives. A path that names
    a folder, lies under a file, or cannot be written is an `OutputError` naming it.
    """
    for path in files:
        check_output_path(path)
    temps = {}
    try:
        for path, data in files.items():
            path = Path(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OutputError(f"{path}: cannot create its folder {path.parent}: {_reason(e)}") from None
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
            try:
                with open(tmp, "xb") as f:          # a new file: never someone else's
                    temps[path] = tmp
                    f.write(data)
            except OSError as e:
                raise OutputError(f"{path}: cannot write: {_reason(e)}") from None
        _commit(temps)
    finally:
        for tmp in temps.values():
            if os.path.lexists(tmp):
                os.unlink(tmp)


def _commit(temps: dict) -> None:
    """Rename each temporary file onto its path; if one rename fails, undo the earlier ones."""
    done = []                                   # (path, the old file kept under a second name, or None)
    try:
        for path, tmp in temps.items():
            backup = path.with_name(f".{path.name}.{secrets.token_hex(6)}.old")
            try:
                os.link(path, backup)           # the old contents stay reachable until all renames are done
            except OSError:
                backup = None                   # no old file (or no hard links here): nothing to restore
            done.append((path, backup))
            try:
                os.replace(tmp, path)
            except OSError as e:
                done.pop()
                if backup is not None:
                    os.unlink(backup)
                raise OutputError(f"{path}: cannot write: {_reason(e)}") from None
    except BaseException:
        for path, backup in reversed(done):
            if backup is not None:
                os.replace(backup, path)
            else:
                os.unlink(path)
        raise
    for _, backup in done:
        if backup is not None:
            os.unlink(backup)


def write_atomic(path: "str | os.PathLike", data: bytes) -> None:
    """Write one file whole or not at all (see `write_files`)."""
    write_files({path: data})


def check_output_path(path: "str | os.PathLike") -> None:
    """Refuse (`OutputError`) a path that is, or must be, a folder, or that has a file among its
    parents. `write_files` checks every path with it; a command may call it before long work."""
    text = os.fspath(path)
    if not text or text.endswith(("/", os.sep)) or os.path.isdir(text):
        raise OutputError(f"{text or repr(text)}: is a folder, not a file to write; name the output file")
    for parent in Path(text).absolute().parents:
        try:
            if not parent.exists():
                continue
            is_dir = parent.is_dir()
        except OSError:                       # cannot look: the write itself will say why
            return
        if not is_dir:
            raise OutputError(f"{text}: cannot write under {parent}, which is a file, not a folder")
        return


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def read_json(path: "str | os.PathLike", what: str):
    """Parse a JSON file; any failure is a DataError naming the file and the problem."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a {what} file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a JSON {what} file (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON in the {what} file: {e.msg} "
                        f"at line {e.lineno} column {e.colno}") from None
    except (ValueError, RecursionError) as e:    # an integer of thousands of digits; nesting too deep
        raise DataError(f"{path}: cannot read the {what} file: {e}") from None


# --- JSON values -------------------------------------------------------------------------------
def is_number(v) -> bool:
    """A JSON number that is a finite float: bools, NaN, infinities and integers too large for a
    float (JSON allows any number of digits) are not. Every reader of JSON numbers checks with it,
    so that nothing downstream meets an OverflowError."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)       # an int beyond the float range raises OverflowError
    except OverflowError:
        return False


def is_int(v) -> bool:
    """A JSON integer within the float range (bools and larger integers are not), so that it can
    be an id that NumPy and pycocotools take."""
    return isinstance(v, int) and is_number(v)


def brief(v, limit: int = 60) -> str:
    """repr of a JSON value for a message, cut short (a 400-digit number stays readable)."""
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."
