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
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from ..errors import RefposeError

EXIT_BROKEN_PIPE = 128 + 13               # SIGPIPE, as a shell reports it

# modules of this package that define commands, in the order `--help` lists them: models ends
# with `export` and oracle starts with `export-onnx`, so the two exports sit side by side
COMMAND_MODULES = ("infer", "eval", "train", "synth", "models", "quantize", "oracle", "bench")


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


def _run(args) -> int:
    try:
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, *_, **__: sys.stderr.write(
                f"refpose {args.command}: warning: {message}\n")
            return args.run(args) or 0
    except RefposeError as e:
        sys.stderr.write(f"refpose {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"refpose {args.command}: interrupted\n")
        return 130


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
