"""The option types of every command (refpose/cli/args.py): what each accepts and how it refuses."""
import argparse

import pytest

from refpose.cli import args


@pytest.mark.parametrize("parse, text, value", [
    (args.finite_float, "0.5", 0.5), (args.finite_float, " -3 ", -3.0), (args.positive_int, "7", 7),
    (args.nonnegative_int, "0", 0), (args.seed, "4294967295", 2 ** 32 - 1), (args.probability, "1", 1.0),
    (args.seconds, "0", 0.0), (args.int_range(13, 20), "20", 20), (args.positive_float, "1e-9", 1e-9)])
def test_accepts(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize("parse, text", [
    (args.finite_float, "nan"), (args.finite_float, "inf"), (args.finite_float, "-Infinity"), (args.finite_float, "x"),
    (args.positive_int, "0"), (args.positive_int, "1.5"), (args.positive_int, "1e3"), (args.nonnegative_int, "-1"),
    (args.seed, "-1"), (args.seed, str(2 ** 32)), (args.probability, "1.01"), (args.probability, "nan"),
    (args.seconds, "1e308"), (args.seconds, "-1"), (args.int_range(13, 20), "21"), (args.positive_float, "0"),
    (args.float_range(0.0, 1.0, lo_open=True), "0")])
def test_refuses_with_what_it_expected(parse, text):
    with pytest.raises(argparse.ArgumentTypeError, match=f"expected .*got {text!r}"):
        parse(text)


@pytest.mark.parametrize("text, value", [("1", (1, 1)), ("8", (8, 8)), ("2-6", (2, 6)), (" 3-3 ", (3, 3))])
def test_worker_range_accepts_a_count_or_a_range(text, value):
    assert args.worker_range(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "3-2", "1-", "a", "1-2-3", "1.5", "1-100001"])
def test_worker_range_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError, match=f"expected a number of workers N or a range .*got {text!r}"):
        args.worker_range(text)


@pytest.mark.parametrize("text", ["local", "auto", "127.0.0.1:6379", "head.example:6379", "ray://head:10001",
                                  "[::1]:6379"])
def test_ray_address_accepts(text):
    assert args.ray_address(text) == text


@pytest.mark.parametrize("text", ["", "head", "head:", "head:99999", "http://head:6379", "head:6379/x", "Local"])
def test_ray_address_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected local, auto, HOST:PORT or ray://HOST:PORT"):
        args.ray_address(text)
