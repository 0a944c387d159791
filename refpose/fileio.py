"""Files in and out: outputs written whole or not at all; JSON inputs read and their numbers checked."""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import re
import secrets
import shutil
import stat
from pathlib import Path

from .errors import DataError, OutputError, WeightsError


def write_files(files: "dict[str | os.PathLike, bytes]", inputs=()) -> None:
    """Write every file to a new temporary name beside it, then rename them all into place.

    A reader (or a crash) never sees a half-written file, and the files are committed together
    or not at all: every path is checked first (`check_output_path`, against the command's
    `inputs` too), every file is written in full before the first rename, and when a rename still
    fails (the folder changed meanwhile) the files already renamed are put back as they were
    (their old contents were kept under a second name, a hard link). The window left: a crash or
    a kill between the first and the last rename, a few system calls long, leaves the new files
    of those renamed so far. The temporary names are refpose's own (`temporary_path`), held
    locked while in use, so that the leftovers of a killed run are removed by the next run that
    writes into the folder (`sweep_temporaries`) and skipped when a folder is scanned for inputs.
    Folders are created as needed; the files get the mode the umask gives. A path that names
    a folder, lies under a file, or cannot be written is an `OutputError` naming it.
    """
    for path in files:
        check_output_path(path, inputs)
    temps, held = {}, []
    try:
        for path, data in files.items():
            path = Path(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OutputError(f"{path}: cannot create its folder {path.parent}: {_reason(e)}") from None
            sweep_temporaries(path.parent)
            tmp = temporary_path(path)
            try:
                with open(tmp, "xb") as f:          # a new file: never someone else's
                    temps[path] = tmp
                    held.append(hold(tmp))
                    f.write(data)
            except OSError as e:
                raise OutputError(f"{path}: cannot write: {_reason(e)}") from None
        _commit(temps, held)
    finally:
        for tmp in temps.values():
            if os.path.lexists(tmp):
                os.unlink(tmp)
        for fd in held:
            release(fd)


def _commit(temps: dict, held: list) -> None:
    """Rename each temporary file onto its path; if one rename fails, undo the earlier ones."""
    done = []                                   # (path, the old file kept under a second name, or None)
    try:
        for path, tmp in temps.items():
            held.append(hold(path))              # the old file: its second name below is locked with it
            backup = temporary_path(path, "old")
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


def write_atomic(path: "str | os.PathLike", data: bytes, inputs=()) -> None:
    """Write one file whole or not at all, never over one of `inputs` (see `write_files`)."""
    write_files({path: data}, inputs)


# --- refpose's temporary files ---------------------------------------------------------------------
# `.NAME.TOKEN.tmp` (a file on its way in), `.NAME.TOKEN.old` (one on its way out), or, for writers
# that choose a format by suffix, `.STEM.TOKEN.tmp.SUFFIX`; TOKEN is 12 hex digits
TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{12}\.(?:tmp|old)(?P<suffix>\.[^.]+)?")


def temporary_path(path: "str | os.PathLike", kind: str = "tmp", keep_suffix: bool = False) -> Path:
    """A new name beside `path` for its temporary file (`kind` "tmp") or its old contents ("old"):
    hidden, unique, and recognised by `is_temporary`. With `keep_suffix`, the name ends with the
    path's suffix (`.clip.pose.TOKEN.tmp.mp4`), for writers that choose a format by it."""
    path = Path(path)
    token = secrets.token_hex(6)
    if keep_suffix and path.suffix:
        return path.with_name(f".{path.stem}.{token}.{kind}{path.suffix}")
    return path.with_name(f".{path.name}.{token}.{kind}")


def is_temporary(name: "str | os.PathLike") -> bool:
    """Whether a file name is one of refpose's temporary names (`temporary_path`): a folder
    scanned for inputs skips them."""
    return TEMPORARY_NAME.fullmatch(os.path.basename(os.fspath(name))) is not None


def hold(path: "str | os.PathLike") -> int | None:
    """Lock a file or folder (flock, exclusive) for as long as this process keeps the returned
    descriptor open (`release`); a lock dies with its process, SIGKILL included, which is how
    `sweep_temporaries` tells a live temporary file from the leftover of a killed run. None when
    it cannot be locked (held by another process, no permission, a system without flock)."""
    try:
        import fcntl
    except ImportError:                       # not POSIX: no locks, and nothing is swept
        return None
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)   # a pipe must not block the open
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def release(fd: int | None) -> None:
    """Give up a lock taken by `hold`."""
    if fd is not None:
        os.close(fd)


def sweep_temporaries(folder: "str | os.PathLike") -> None:
    """Remove the temporary files and folders that killed refpose runs left in `folder` (those of
    live runs are locked: `hold`). Once per folder and process: a folder of 10,000 outputs takes
    ~30 ms to list."""
    try:
        _sweep(os.path.realpath(folder))
    except OSError:                           # cannot list the folder: whatever writes there will say why
        pass


@functools.lru_cache(maxsize=None)
def _sweep(folder: str) -> None:
    with os.scandir(folder) as it:
        stale = [e.path for e in it if e.name.startswith(".") and is_temporary(e.name)]
    for path in stale:
        if os.path.islink(path):              # a link cannot be locked; ours live for a few system calls
            with contextlib.suppress(OSError):
                os.unlink(path)               # the link only, never what it points to
            continue
        fd = hold(path)
        if fd is None:                        # in use by a live run, or not ours to remove
            continue
        try:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        except OSError:
            pass
        finally:
            release(fd)


class InputFiles:
    """The files a command reads, known by identity (device and inode, as `os.path.samefile`
    compares them), so that each output is checked against all of them in one look-up."""

    def __init__(self, paths=()):
        self.ids: dict[tuple[int, int], str] = {}
        for p in paths:
            if isinstance(p, (str, os.PathLike)):          # not an in-memory input (a dict, a list)
                st = _stat(p)
                if st is not None:
                    self.ids.setdefault((st.st_dev, st.st_ino), os.fspath(p))

    def find(self, path) -> str | None:
        """The input that `path` is (the same file, by any name or link), or None."""
        st = _stat(path) if self.ids else None
        return None if st is None else self.ids.get((st.st_dev, st.st_ino))


def _stat(path):
    try:
        return os.stat(path)
    except (OSError, ValueError):             # absent (not yet written), or not a valid path
        return None


def check_output_path(path: "str | os.PathLike", inputs=()) -> None:
    """Refuse (`OutputError`) a path that is, or must be, a folder, that has a file among its
    parents, or that is the same file as one of `inputs` (paths, or `InputFiles`; links included:
    writing it would destroy the input). `write_files` checks every path with it; a command calls
    it with its inputs before any work."""
    text = os.fspath(path)
    same = (inputs if isinstance(inputs, InputFiles) else InputFiles(inputs)).find(text)
    if same is not None:
        raise OutputError(f"{text}: is the input {same}; an output never replaces an input")
    if not text or text.endswith(("/", os.sep)) or os.path.isdir(text):
        raise OutputError(f"{text or repr(text)}: is a folder, not a file to write; name the output file")
    for parent in absolute_path(text).parents:
        try:
            if not parent.exists():
                continue
            is_dir = parent.is_dir()
        except OSError:                       # cannot look: the write itself will say why
            return
        if not is_dir:
            raise OutputError(f"{text}: cannot write under {parent}, which is a file, not a folder")
        return


def absolute_path(path: "str | os.PathLike") -> Path:
    """`path` made absolute; OutputError for a relative path when the current directory was deleted."""
    try:
        return Path(path).absolute()
    except OSError:                           # getcwd: ENOENT
        raise OutputError(f"{os.fspath(path)}: cannot write: the current directory no longer exists") from None


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def name_in_folder(folder: str, name: str) -> tuple[str, str | None]:
    """The path of a file named in an annotation file (`name`, relative to `folder`) and None, or
    `name` and why it cannot be used: an absolute name, or one whose `..` leads out of the folder,
    would read a file the user never gave as an input."""
    rel = os.path.normpath(name)
    if os.path.isabs(name) or rel == ".." or rel.startswith(".." + os.sep):
        return name, f"file_name leads outside {folder}; names must be relative to the image folder"
    return os.path.join(folder, rel), None


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
        _cut_torn_line(f)
    return open(path, "a", encoding="utf-8")


def _cut_torn_line(f) -> None:
    """Truncate a file opened "rb+" after its last newline (to nothing when it has none)."""
    size = f.seek(0, os.SEEK_END)
    if not size:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    start = max(0, size - (1 << 16))
    while True:                               # find the last newline, reading back in blocks
        f.seek(start)
        end = f.read(size - start).rfind(b"\n")
        if end >= 0 or start == 0:
            f.truncate(start + end + 1 if end >= 0 else 0)
            return
        start = max(0, start - (1 << 16))


class LineLog:
    """An append-only file of lines (JSON Lines) that one process at a time writes: created when
    absent, opened under an exclusive lock (`busy`, an OutputError, when another process holds it),
    a torn last line (one a crash left without its newline) cut off. `lines` are its complete
    lines; `append` adds one and flushes it; `reset` starts it over. Use it as a context manager."""

    def __init__(self, path: "str | os.PathLike", busy: str = "in use by another process"):
        try:
            import fcntl
        except ImportError:                   # not POSIX: no locks
            fcntl = None
        self.path = os.fspath(path)
        problem = path_problem(self.path) if os.path.lexists(self.path) else None
        if problem:                           # a pipe would block the open, a folder cannot be appended to
            raise OutputError(f"{self.path}: {problem}")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise OutputError(f"{self.path}: cannot write: {_reason(e)}") from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"{self.path}: {busy}") from None
        except OSError:                       # a file system without locks: one writer is the caller's care
            pass
        self.file = os.fdopen(fd, "rb+")
        try:
            _cut_torn_line(self.file)
            self.file.seek(0)
            self.lines = self.file.read().decode("utf-8", "replace").split("\n")[:-1]
        except OSError as e:
            self.file.close()
            raise OutputError(f"{self.path}: cannot read: {_reason(e)}") from None

    def append(self, line: str) -> None:
        self.file.seek(0, os.SEEK_END)
        self.file.write(line.encode() + b"\n")
        self.file.flush()
        self.lines.append(line)

    def reset(self, first: str) -> None:
        """Empty the file and write `first` as its first line."""
        self.file.truncate(0)
        self.lines = []
        self.append(first)

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def unpacked_size(path: "str | os.PathLike") -> int:
    """The bytes a file holds once unpacked: for a zip archive (.npz, a PyTorch .pt), the sizes its
    central directory declares, read before anything is inflated (a 400 KB archive can declare
    1,000 times that: a zip bomb stops here); for any other file, its size."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return sum(info.file_size for info in z.infolist())
    return os.path.getsize(path)


def read_npz(path: "str | os.PathLike", what: str, max_bytes: int, error=DataError) -> dict:
    """Every array of a .npz file ({name: ndarray}), read without pickle, after the path check and
    a bound on what it unpacks to (`unpacked_size`, `max_bytes`); any failure is `error` naming the
    file. The one reader of .npz files: weights, golden files and a port's outputs."""
    import numpy as np

    path = os.fspath(path)
    problem = path_problem(path, kind=f"a {what}")
    if problem:
        raise error(f"{path}: {problem if problem != 'no such file' else f'no such {what}'}")
    try:
        size = unpacked_size(path)
        if size > max_bytes:
            raise error(f"{path}: unpacks to {size:,} bytes, more than the {max_bytes:,} a {what} of refpose needs")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except error:
        raise
    except Exception as e:   # a damaged zip or array header raises many types (BadZipFile, ValueError, EOFError, ...)
        raise error(f"{path}: not a readable .npz {what} ({type(e).__name__})") from None


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


def check_key_set(tensors: dict, expected: dict[str, tuple], source: str) -> None:
    """WeightsError naming the first missing key (with the shape expected) or unexpected key
    (with its shape), and how many more, when the keys of `tensors` are not those of `expected`
    ({key: shape}): float and int8 weights files alike."""
    import numpy as np

    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise WeightsError(f"{source}: missing key {missing[0]!r} (expected shape {tuple(expected[missing[0]])})"
                           + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    if unexpected:
        first = unexpected[0]
        raise WeightsError(f"{source}: unexpected key {first!r} (shape {tuple(np.shape(tensors[first]))})"
                           + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""))
