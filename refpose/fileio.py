"""Files in and out: outputs written whole or not at all; JSON inputs read and their numbers checked."""
from __future__ import annotations

import errno
import json
import math
import os
import stat
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


def check_output_path(path: "str | os.PathLike", inputs=()) -> None:
    """Refuse (`OutputError`) a path that is, or must be, a folder, that has a file among its
    parents, or that is the same file as one of `inputs` (links included: writing it would destroy
    the input). `write_files` checks every path with it; a command calls it with its inputs before
    any work."""
    text = os.fspath(path)
    for inp in inputs:
        if inp is not None and _same_file(text, inp):
            raise OutputError(f"{text}: is the input {os.fspath(inp)}; an output never replaces an input")
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


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):             # one of them does not exist (yet): not the same file
        return False


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def path_problem(path: "str | os.PathLike", folder: bool = False, kind: str = "an image") -> str | None:
    """Why `path` is not a regular file (with `folder`, a folder) that can be opened, in the words of
    the real cause, or None: the one check of every input path. `kind` names what the file should
    be ("an image", "a video"). `os.path.exists` says "no" to a missing file, a broken link, a link
    loop and a folder on the way that cannot be entered alike; a user needs to know which. A named
    pipe, a device or a socket is refused: opening a pipe blocks until someone writes to it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ENOENT and os.path.islink(path):
            return f"broken symbolic link (to {os.readlink(path)})"
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
        if e.errno == errno.EACCES:
            return "permission denied: a folder on its path cannot be entered"
        if e.errno == errno.ENOENT:
            return "no such folder" if folder else "no such file"
        return e.strerror or str(e)
    except ValueError:                          # a NUL byte in the name
        return "not a valid path"
    if folder:
        if not stat.S_ISDIR(mode):
            return "not a folder"
        if not os.access(path, os.R_OK | os.X_OK):
            return "permission denied: the folder cannot be read"
        return None
    if stat.S_ISDIR(mode):
        return f"is a directory, not {kind}"
    if not stat.S_ISREG(mode):
        what = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        return f"{what}, not a regular file"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def open_append(path: "str | os.PathLike"):
    """Open a file of lines for appending, after cutting off a torn last line (one a crash left
    without its newline), so that the next line starts on a line of its own: an append-only log
    never glues a new line onto a half-written one."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                start = max(0, size - (1 << 16))
                while True:                   # find the last newline, reading back in blocks
                    f.seek(start)
                    end = f.read(size - start).rfind(b"\n")
                    if end >= 0 or start == 0:
                        f.truncate(start + end + 1 if end >= 0 else 0)
                        break
                    start = max(0, start - (1 << 16))
    return open(path, "a", encoding="utf-8")


def unpacked_size(path: "str | os.PathLike") -> int:
    """The bytes a file holds once unpacked: for a zip archive (.npz, a PyTorch .pt), the sizes its
    central directory declares, read before anything is inflated (a 400 KB archive can declare
    1,000 times that: a zip bomb stops here); for any other file, its size."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return sum(info.file_size for info in z.infolist())
    return os.path.getsize(path)


def read_json(path: "str | os.PathLike", what: str):
    """Parse a JSON file; any failure is a DataError naming the file and the problem."""
    path = str(path)
    problem = path_problem(path, kind=f"a {what} file")
    if problem:
        raise DataError(f"{path}: {problem if problem != 'no such file' else f'no such {what} file'}")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
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
