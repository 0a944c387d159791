"""The option types of every command (refpose/cli/args.py): what each accepts and how it refuses."""
import argparse
import os

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


# --- every parser takes its numbers through this module (issue 23, items 14 and 15) -------------------
def _parsers(parser, prefix="refpose"):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prefix} {name}")


def test_no_option_of_any_command_takes_a_bare_int_or_float():
    """`type=float` lets 'nan' and 'inf' through, `type=int` negative counts and sizes too large
    to allocate: every number goes through refpose.cli.args."""
    from refpose.cli import build_parser

    bare = [f"{prog} {'/'.join(a.option_strings) or a.dest}" for prog, p in _parsers(build_parser())
            for a in p._actions if a.type in (int, float)]
    assert bare == []


@pytest.mark.parametrize("argv, words", [
    (["infer", "v.mp4", "--config", "tiny", "--end", "1e308"], "argument --end: expected a time in seconds"),
    (["infer", "v.mp4", "--config", "tiny", "--start", "1e308"], "argument --start: expected a time in seconds"),
    (["infer", "v.mp4", "--config", "tiny", "--end", "nan"], "argument --end: expected a time in seconds"),
    (["oracle", "--onnx", "m.onnx", "--weights", "w", "--seed", "-1"], "argument --seed: expected a seed"),
    (["oracle", "dump", "w", "g.npz", "--seed", "-1"], "argument --seed: expected a seed"),
    (["oracle", "--onnx", "m.onnx", "--weights", "w", "--inputs", "100000000"], "argument --inputs: expected a whole number between 1 and 64"),
    (["oracle", "dump", "w", "g.npz", "--inputs", "100000000"], "argument --inputs: expected a whole number between 1 and 64"),
    (["oracle", "--onnx", "m.onnx", "--weights", "w", "--rtol", "-1"], "argument --rtol: expected a number > 0"),
    (["oracle", "--onnx", "m.onnx", "--weights", "w", "--rtol", "nan"], "argument --rtol: expected a number > 0"),
    (["bench", "--batch", "1000000"], "argument --batch: expected a whole number between 1 and 64"),
    (["bench", "--seed", "-1"], "argument --seed: expected a seed"),
    (["init", "--config", "tiny", "--seed", "-1", "w.safetensors"], "argument --seed: expected a seed"),
    (["synth", "d", "--seed", "99999999999"], "argument --seed: expected a seed"),
    (["eval", "--ann", "a.json", "--images", "d", "--workers", "0"], "argument --workers: expected a number of workers"),
    (["eval", "--ann", "a.json", "--images", "d", "--limit", "-3"], "argument --limit: expected a whole number >= 1"),
    (["export-onnx", "w", "o.onnx", "--opset", "99"], "argument --opset: expected a whole number between 13 and 20"),
    (["infer", "a.jpg", "--box-thr", "inf"], "argument --box-thr: expected a number between 0 and 1"),
])
def test_out_of_range_numbers_are_one_usage_line(tmp_path, capsys, monkeypatch, argv, words):
    """`--end 1e308` was an OverflowError, `oracle --seed -1` a ValueError, `--inputs 100000000` and
    `bench --batch 1000000` tried 26.8 TiB and 275 GiB, `oracle --rtol -1` reported every stage diverging."""
    from refpose.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and words in err, err
    assert os.listdir(tmp_path) == []
