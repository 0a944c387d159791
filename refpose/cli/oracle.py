"""`refpose export-onnx` and `refpose oracle` (compare an ONNX model, or dump golden data)."""
from __future__ import annotations

import argparse

from .args import int_range, positive_float, seed

MAX_INPUTS = 64       # seeded inputs of a check or a golden file: 64 wgnet inputs of float64 taps take ~2 GB

ORACLE_HELP = """\
Check another backend against refpose float64, in one of two ways:

  refpose oracle --onnx MODEL.onnx --weights WEIGHTS [--inputs N] [--seed S] [--rtol R]
      Run MODEL.onnx with ONNX Runtime and refpose float64 (plain NumPy ops) on the same N
      seeded inputs, and report the max absolute and relative error of the heatmaps
      (relative = max|got - ref| / max|ref|). Beyond the tolerance, compare the stage outputs
      and name the first diverging stage, with its error and the index where it is largest.
      The stage tensors are read from inside the graph: `refpose export-onnx` names them
      stem, s1..s4, d1..d3 (with or without --taps); for another model, map its tensors to
      these names with --tap NAME=TENSOR (repeatable; --tap heatmaps=TENSOR for the output).
      Exit status 0 within tolerance, 1 beyond it, 2 for bad input (file, names, shapes,
      config, onnxruntime missing).

  refpose oracle dump WEIGHTS OUT.npz [--inputs N] [--seed S]
      Write golden data for a backend without Python (see `refpose oracle dump --help`).

Tolerances (relative to max|ref|), justified in refpose.porting.oracle: float32 1e-4, float64 2e-13.
"""

DUMP_HELP = """\
Write golden data: refpose float64 on N seeded inputs, as a .npz (no pickle) with the keys

  input               (N, 3, H, W) float64, each value exactly representable in float32
  stem                (N, C, H/4, W/4) the stem's output
  s1 s2 s3 s4         the encoder stages' outputs, NCHW
  d1 d2 d3            the decoder stages' outputs, NCHW
  heatmaps            (N, 17, H/4, W/4) the output
  config              the config as JSON (0-d string)
  format              "refpose-oracle/1";  seed: the seed (0-d int)

All arrays are float64. A backend casts `input` to its dtype, runs, and compares each tap
with max|got - ref| / max|ref| <= 1e-4 (float32) or 2e-13 (float64).
"""


def add_parser(sub) -> None:
    p = sub.add_parser("export-onnx", help="export a model to ONNX through the PyTorch twin (needs torch, onnx)",
                       description="Export WEIGHTS to ONNX through refpose's PyTorch twin: input 'input' "
                       "(N, 3, H, W) float32 with a dynamic batch, output 'heatmaps'. The stage outputs are "
                       "tensors named stem, s1..s4, d1..d3 in the graph, which `refpose oracle` reads to locate "
                       "a divergence; --taps makes them graph outputs too.")
    p.add_argument("weights", metavar="WEIGHTS", help="a weights file (.safetensors or .npz)")
    p.add_argument("out", metavar="OUT.onnx", help="output ONNX file (written atomically)")
    p.add_argument("--opset", type=int_range(13, 20), default=17, help="ONNX opset, 13..20 (default 17)")
    p.add_argument("--taps", action="store_true", help="list the stage tensors among the graph's outputs")
    p.add_argument("--config", help="the config, if the weights file does not carry one")
    p.set_defaults(run=run_export_onnx)

    p = sub.add_parser("oracle", help="check an ONNX model against refpose float64, or dump golden data",
                       description=ORACLE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                       usage="refpose oracle --onnx MODEL.onnx --weights WEIGHTS [options]\n"
                             "       refpose oracle dump WEIGHTS OUT.npz [--inputs N] [--seed S]")
    p.add_argument("--onnx", metavar="MODEL.onnx", help="the ONNX model to check")
    p.add_argument("--weights", metavar="WEIGHTS", help="the weights it should compute with")
    p.add_argument("--config", help="the config, if the weights file does not carry one")
    p.add_argument("--tap", action="append", default=[], metavar="NAME=TENSOR",
                   help="the model's tensor TENSOR is our stage NAME (stem, s1..s4, d1..d3, or heatmaps "
                        "for the output); repeatable, for models not exported by refpose")
    _add_sampling(p, argparse_defaults=True)
    p.add_argument("--rtol", type=positive_float, help="tolerance, as max|got - ref| / max|ref| "
                   "(default: by the model's input dtype, float32 1e-4, float64 2e-13)")
    p.set_defaults(run=run_oracle, oracle_parser=p, action=None)
    actions = p.add_subparsers(title="action (optional)", dest="action", metavar="{dump}",
                               parser_class=type(p))
    d = actions.add_parser("dump", help="write inputs, every tap and the heatmaps in float64 to a .npz",
                           description=DUMP_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                           prog="refpose oracle dump")
    d.add_argument("dump_weights", metavar="WEIGHTS", help="a weights file (.safetensors or .npz)")
    d.add_argument("dump_out", metavar="OUT.npz", help="output file (written atomically)")
    d.add_argument("--config", default=argparse.SUPPRESS, help="the config, if the weights file does not carry one")
    _add_sampling(d, argparse_defaults=False)
    d.set_defaults(run=run_dump)


def _add_sampling(p, argparse_defaults: bool) -> None:
    # on `dump`, SUPPRESS keeps a value given before the word `dump` (refpose oracle --seed 3 dump ...)
    n, default_seed = (2, 0) if argparse_defaults else (argparse.SUPPRESS, argparse.SUPPRESS)
    p.add_argument("--inputs", type=int_range(1, MAX_INPUTS), default=n, metavar="N",
                   help=f"number of seeded inputs, 1..{MAX_INPUTS} (default 2)")
    p.add_argument("--seed", type=seed, default=default_seed, metavar="S", help="seed of the inputs (default 0)")


def run_export_onnx(args) -> int:
    from ..porting.onnx_export import export_onnx

    cfg = export_onnx(args.weights, args.config, args.out, opset=args.opset, taps=args.taps)
    print(f"wrote {args.out}: config {cfg.name}, opset {args.opset}, input 'input' (N, 3, "
          f"{cfg.input_size[0]}, {cfg.input_size[1]}), output 'heatmaps'" + (" + taps" if args.taps else ""))
    return 0


def run_oracle(args) -> int:
    if not (args.onnx and args.weights):
        args.oracle_parser.error("give --onnx MODEL.onnx and --weights WEIGHTS, or use `refpose oracle dump`")
    from ..porting.oracle import oracle_onnx
    from ..porting.runtimes import parse_taps

    result = oracle_onnx(args.onnx, args.weights, n=args.inputs, seed=args.seed, rtol=args.rtol,
                         config=args.config, taps=parse_taps(args.tap))
    print("\n".join(result.lines()))
    return 0 if result.passed else 1


def run_dump(args) -> int:
    if args.onnx or args.weights or args.rtol is not None or args.tap:
        args.oracle_parser.error("`oracle dump` takes WEIGHTS OUT.npz; --onnx, --weights, --rtol and --tap "
                                 "belong to the comparison")
    from ..porting.oracle import dump

    cfg = dump(args.dump_weights, args.dump_out, n=args.inputs, seed=args.seed, config=args.config)
    print(f"wrote {args.dump_out}: config {cfg.name}, {args.inputs} input(s), seed {args.seed}; "
          "keys input, stem, s1..s4, d1..d3, heatmaps (float64), config, format, seed")
    return 0
