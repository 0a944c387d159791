"""The `refpose` command. It parses arguments and calls library functions; nothing more.

Each command lives in a module of this package with `add_parser(subparsers)`, which
registers it and sets `run` as its handler. Every error refpose raises on purpose
becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import RefposeError

# modules of this package that define commands, in the order `--help` lists them
COMMAND_MODULES = ("infer", "eval", "models", "bench", "oracle", "synth", "train")


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
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except RefposeError as e:
        sys.stderr.write(f"refpose {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"refpose {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
