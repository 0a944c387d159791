"""The `refpose` command. It parses arguments and calls library functions; nothing more.

Each command lives in a module of this package with `add_parser(subparsers)`, which
registers it and sets `run` as its handler. Every error refpose raises on purpose
becomes one line on stderr and exit status 2; a warning is one line on stderr too.

When the reader of standard output goes away (`refpose info --config tiny | head -1`), the
command stops quietly with exit status 141, the status a shell reports for a program ended
by SIGPIPE (128 + 13), as `cat` or `yes` would: no traceback, and `set -o pipefail` still
sees that the output was cut short. Python ignores SIGPIPE and raises BrokenPipeError instead;
standard output is pointed at the null device so that the final flush does not raise again.
Standard output that cannot be written otherwise (`> /dev/full`) is one error line, status 2.

SIGTERM ends a command as Ctrl-C does, through the normal exception path (`Terminated`): the
temporary files it was writing are removed and finished work is kept; the status is 143
(128 + 15). A file name that the terminal's encoding cannot show (bytes that are not UTF-8)
is printed with those bytes escaped (`\\xff`) instead of stopping the command.
"""
from __future__ import annotations

import argparse
import codecs
import importlib
import os
import signal
import sys
import warnings

from ..errors import RefposeError

EXIT_BROKEN_PIPE = 128 + 13               # SIGPIPE, as a shell reports it
EXIT_TERMINATED = 128 + signal.SIGTERM     # as a shell reports a program ended by SIGTERM
ESCAPE = "refpose-escape"                  # the error handler of standard output and error


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the command is, so that it ends as an interruption does: every
    `finally` runs (temporary files removed, progress kept)."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)      # a second one must not cut the cleanup short
    raise Terminated()


def _escape(error: UnicodeEncodeError):
    """Encoding error handler: a byte that was not UTF-8 in a file name (Python keeps it as a lone
    surrogate, PEP 383) is shown as \\xNN, any other character as \\uNNNN."""
    text = error.object[error.start:error.end]
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                   else c.encode("ascii", "backslashreplace").decode() for c in text), error.end


codecs.register_error(ESCAPE, _escape)

# modules of this package that define commands, in the order `--help` lists them: models ends
# with `export` and oracle starts with `export-onnx`, so the two exports sit side by side
COMMAND_MODULES = ("infer", "eval", "train", "synth", "models", "oracle", "quantize", "bench")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the command and the problem), status 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def build_parser() -> Parser:
    parser = Parser(prog="refpose", description="WGNet pose estimation on the CPU, in NumPy: "
                    "a reference implementation and numerical oracle.")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"refpose {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f".{name}", __name__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    command = "refpose"
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):    # a file name is never a reason to stop
            stream.reconfigure(errors=ESCAPE)
    try:
        try:
            args = build_parser().parse_args(argv)
            command = f"refpose {args.command}"
            return _run(args)
        finally:
            if sys.stdout is not None:        # None when started with standard output closed
                sys.stdout.flush()            # a closed pipe or a full disk shows here, not at exit
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    except OSError as e:                      # standard output on a full disk or a failing device
        _stdout_to_devnull()
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"{command}: error: {where}{e.strerror or e}\n")
        return 2


def _torch_from_a_deleted_directory() -> None:
    """Import torch (when installed) from `/` if the current directory was deleted, then come back.

    torch's MKL cannot be loaded from a deleted current directory: the process stops with "Intel
    oneMKL FATAL ERROR: Cannot load libtorch_cpu.so", status 2, even for commands given absolute
    paths; and torch._dynamo, which an optimizer imports on its first step, reads the current
    directory when imported. Coming back (fchdir) keeps relative paths failing as they should,
    never resolved in `/`."""
    import importlib.util

    try:
        os.getcwd()
        return
    except OSError:
        pass
    if "torch" in sys.modules or importlib.util.find_spec("torch") is None:
        return
    here = os.open(".", os.O_RDONLY)
    try:
        os.chdir("/")
        import torch  # noqa: F401
        import torch._dynamo  # noqa: F401  (optimizers import it on first use; its config reads the directory)
    finally:
        os.fchdir(here)
        os.close(here)


def _run(args) -> int:
    from ..threads import environment_problem

    _torch_from_a_deleted_directory()

    problem = environment_problem()
    if problem:
        sys.stderr.write(f"refpose {args.command}: error: {problem}\n")
        return 2
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:                        # not the main thread: SIGTERM keeps its default
        previous = None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, *_, **__: sys.stderr.write(
                f"refpose {args.command}: warning: {message}\n")
            return args.run(args) or 0
    except RefposeError as e:
        sys.stderr.write(f"refpose {args.command}: error: {e}\n")
        return 2
    except Terminated:
        sys.stderr.write(f"refpose {args.command}: terminated (SIGTERM)\n")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        sys.stderr.write(f"refpose {args.command}: interrupted\n")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stdout_to_devnull() -> None:
    """Point standard output at the null device (what is still buffered for it is dropped)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):    # no descriptor behind sys.stdout (closed, a capture)
        pass


if __name__ == "__main__":
    sys.exit(main())
