"""The types of every command-line option: each value is checked once, as argparse reads it.

Every parser of `refpose` takes its numbers through these, so a NaN, an infinity, a negative
count or a value too large to allocate is the same one-line usage error (status 2) in every
command, before anything is read or written. A type is a function from the option's text to
its value that raises `argparse.ArgumentTypeError` with what was expected.
"""
from __future__ import annotations

import argparse
import math

SEED_MAX = 2 ** 32 - 1          # NumPy's and torch's seeds: 0 .. 2^32 - 1
WORKERS_MAX = 100_000           # actors of a Ray pool: far above any cluster a pose run is given


def _number(text: str, kind) -> float | int | None:
    try:
        value = kind(text.strip())
    except (ValueError, OverflowError, AttributeError):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _describe(lo, hi, lo_open: bool = False) -> str:
    def text(v):
        return f"{v:,}" if isinstance(v, int) else f"{v:g}"
    if hi is None:
        return f"{'>' if lo_open else '>='} {text(lo)}"
    return f"between {text(lo)} and {text(hi)}" if not lo_open else f"> {text(lo)} and <= {text(hi)}"


def finite_float(text: str) -> float:
    """A finite number ('nan' and 'inf' are refused: no threshold, box or tolerance means anything with them)."""
    value = _number(text, float)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def float_range(lo: float, hi: float | None = None, *, lo_open: bool = False, what: str = "a number"):
    """The type of a finite float in [lo, hi] ((lo, hi] with `lo_open`; no upper bound when hi is None)."""
    def parse(text: str) -> float:
        value = _number(text, float)
        if value is None or value < lo or (lo_open and value == lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {what} {_describe(lo, hi, lo_open)}, got {text!r}")
        return value
    parse.__name__ = "float"          # argparse names the type in some messages
    return parse


def int_range(lo: int, hi: int | None = None, *, what: str = "a whole number"):
    """The type of an integer in [lo, hi] (no upper bound when hi is None)."""
    def parse(text: str) -> int:
        value = _number(text, int)
        if value is None or value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {what} {_describe(lo, hi)}, got {text!r}")
        return value
    parse.__name__ = "int"
    return parse


def worker_range(text: str) -> tuple[int, int]:
    """'N' (a pool of N) or 'MIN-MAX' (a pool that grows from MIN to MAX) -> (MIN, MAX), 1 <= MIN <= MAX."""
    parts = [_number(v, int) for v in text.split("-")] if text.count("-") <= 1 else []
    if len(parts) not in (1, 2) or any(v is None or v < 1 for v in parts) or parts[0] > parts[-1] \
            or parts[-1] > WORKERS_MAX:
        raise argparse.ArgumentTypeError(f"expected a number of workers N or a range MIN-MAX (1 <= MIN <= MAX "
                                         f"<= {WORKERS_MAX:,}), got {text!r}")
    return parts[0], parts[-1]


def ray_address(text: str) -> str:
    """Where the Ray cluster is: 'local' (a private instance), 'auto' (the one `ray start` made, or
    RAY_ADDRESS), HOST:PORT or ray://HOST:PORT."""
    from urllib.parse import urlsplit

    if text in ("local", "auto"):
        return text
    try:
        parts = urlsplit(text if "://" in text else f"tcp://{text}")
        ok = parts.scheme in ("tcp", "ray") and bool(parts.hostname) and parts.port is not None \
            and not parts.path.strip("/") and not parts.query
    except ValueError:                      # a port out of range or not a number
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"expected local, auto, HOST:PORT or ray://HOST:PORT, got {text!r}")
    return text


positive_int = int_range(1)
nonnegative_int = int_range(0)
seed = int_range(0, SEED_MAX, what="a seed")
positive_float = float_range(0.0, lo_open=True, what="a number")
nonnegative_float = float_range(0.0, what="a number")
probability = float_range(0.0, 1.0, what="a number")
seconds = float_range(0.0, 1e7, what="a time in seconds")          # 1e7 s: 115 days of video
