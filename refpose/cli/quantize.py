"""`refpose quantize`: post-training static quantization of a float weights file to int8."""
from __future__ import annotations

QUANTIZE_HELP = """\
Quantize float WGNet weights to int8 as ONNX Runtime and OpenVINO's static quantization do:
weights int8 symmetric per output channel (BatchNorm folded first), activations uint8 per tensor
with a zero point, their ranges from calibration crops run through the float model (cropped as
`refpose infer` crops: boxes from --boxes, else the whole image). LayerNorm, softmax and the
head's output stay float. The file (docs/int8.md) runs without the float file:
`refpose infer --weights W.int8.safetensors`, `refpose eval --weights ...`, `refpose export-onnx ...`.
"""


def add_parser(sub) -> None:
    import argparse

    from ..quant.quantize import DEFAULT_METHOD, METHODS

    p = sub.add_parser("quantize", help="quantize float weights to int8 (calibrated on images)",
                       description=QUANTIZE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", metavar="WEIGHTS", help="float weights (a file, or the name of shipped weights)")
    p.add_argument("--calib", required=True, metavar="IMAGES", help="a folder of calibration images")
    p.add_argument("--boxes", metavar="DETS.json", help="COCO person detections for the calibration images "
                   "(default: the whole image)")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help=f"activation ranges: min-max, the 99.999 %% percentile, or least KL divergence "
                        f"(default {DEFAULT_METHOD}; see docs/int8.md)")
    p.add_argument("--float-stages", default="", metavar="S1,S2",
                   help="stages to keep in float (stem, s1..s4, d1..d3, head), e.g. the one the "
                        "`refpose oracle --quant` report names")
    p.add_argument("--out", required=True, metavar="W.int8.safetensors", help="the int8 file (written atomically)")
    p.set_defaults(run=run_quantize)


def run_quantize(args) -> int:
    from ..quant.quantize import quantize_file

    stages = [s for s in args.float_stages.split(",") if s]
    s = quantize_file(args.weights, args.calib, args.out, args.boxes, args.method, stages)
    kept = f", kept in float: {', '.join(s['float_stages'])}" if s["float_stages"] else ""
    print(f"wrote {args.out}: config {s['config']}, int8, calibrated on {s['crops']} crops of {s['images']} "
          f"images ({s['method']}){kept}")
    return 0
