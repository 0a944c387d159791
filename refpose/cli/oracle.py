"""`refpose export-onnx` and `refpose oracle` (compare an ONNX model, or dump golden data)."""
from __future__ import annotations

import argparse

import numpy as np

from ..errors import WeightsError
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

  int8 (docs/int8.md):
  refpose oracle --onnx MODEL.int8.onnx --weights W.int8.safetensors
      A port of refpose's QDQ export against refpose's int8 oracle, tap by tap, in steps of each
      tap's scale (tolerance 4 sqrt(n) steps, n the quantizers before the tap), and against float64.
  refpose oracle --quant W.int8.safetensors --float W.safetensors --images DIR [--boxes DETS.json]
      Where the accuracy goes: per stage, the int8 model's error against float64 (relative, SNR)
      and the heatmaps' error when only that stage is quantized; names the stage that loses most.

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
    p.add_argument("--ort-optimization", choices=("all", "basic"), default="all",
                   help="ONNX Runtime's graph rewrites: all (default; QDQ pairs fused into integer kernels) "
                        "or basic (a QDQ model runs as written)")
    p.add_argument("--quant", metavar="W.int8.safetensors", help="the per-stage report of an int8 file ...")
    p.add_argument("--float", metavar="W.safetensors", help="... against the float weights it came from ...")
    p.add_argument("--images", metavar="DIR", help="... on the crops of these images (whole image, or --boxes)")
    p.add_argument("--boxes", metavar="DETS.json", help="person boxes of the --images (COCO detections)")
    p.add_argument("--limit", type=int_range(1, 10_000), default=32, metavar="N",
                   help="the report's first N images of --images (default 32: it runs the float64 "
                        "reference once per stage, slow for wgnet)")
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
    from ..weights import read_weights

    if read_weights(args.weights).int8:       # an int8 file: its QDQ model (docs/int8.md)
        from ..quant.onnx_qdq import export_int8

        cfg = export_int8(args.weights, args.out, taps=args.taps, opset=args.opset)
        print(f"wrote {args.out}: config {cfg.name}, int8 QDQ, opset {args.opset}, input 'input' (N, 3, "
              f"{cfg.input_size[0]}, {cfg.input_size[1]}), output 'heatmaps'" + (" + taps" if args.taps else ""))
        return 0
    cfg = export_onnx(args.weights, args.config, args.out, opset=args.opset, taps=args.taps)
    print(f"wrote {args.out}: config {cfg.name}, opset {args.opset}, input 'input' (N, 3, "
          f"{cfg.input_size[0]}, {cfg.input_size[1]}), output 'heatmaps'" + (" + taps" if args.taps else ""))
    return 0


def run_quant_report(args) -> int:
    if not (args.quant and args.float and args.images) or args.onnx or args.weights:
        args.oracle_parser.error("the int8 report takes --quant W.int8.safetensors --float W.safetensors --images DIR")
    from ..quant.quantize import calibration_crops, calibration_images
    from ..quant.report import stage_lines, stage_report
    from ..weights import float_file, from_tensors, load, read_weights

    model = load(args.quant, impl="reference")
    if not hasattr(model, "float_stages"):
        raise WeightsError(f"{args.quant}: float weights, where an int8 file is needed (--quant)")
    wf = float_file(read_weights(args.float))
    float_model = from_tensors(wf.tensors, wf.config_for(model.config), "float64", "reference", source=wf.path)
    x = calibration_crops(calibration_images(args.images)[:args.limit], model.config, args.boxes)
    rows, summary = stage_report(model, float_model, x)
    print(f"{args.quant} against {args.float} in float64, on {len(x)} crops of {args.images}")
    print("\n".join(stage_lines(rows, summary)))
    return 0


def run_oracle_int8(args) -> int:
    from ..porting.oracle import make_inputs, reference_taps
    from ..porting.runtimes import OnnxBackend, parse_taps
    from ..quant.report import compare_port, port_lines
    from ..weights import load

    model = load(args.weights, impl="reference")
    backend = OnnxBackend(args.onnx, parse_taps(args.tap), optimization=args.ort_optimization)
    backend.check(model.config, args.weights)
    x = make_inputs(model.config, args.inputs, args.seed).astype(np.float32)
    f64 = None
    if args.float:
        f64 = reference_taps(args.float, x.astype(np.float64), model.config)
    rows = compare_port(backend.run(x), model, x, f64)
    print(f"{args.onnx}: ONNX Runtime (graph optimization {args.ort_optimization}) against refpose's int8 oracle "
          f"on {args.weights}; {args.inputs} input(s), seed {args.seed}")
    print("\n".join(port_lines(rows)))
    return 0 if all(r.within for r in rows) else 1


def run_oracle(args) -> int:
    if args.quant or (args.images and not args.onnx):
        return run_quant_report(args)
    if args.weights and args.onnx:
        from ..weights import read_weights

        if read_weights(args.weights).int8:
            return run_oracle_int8(args)
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
