"""`refpose info`, `refpose init`, `refpose export`: configs and weight files."""
from __future__ import annotations

import json

from ..config import CONFIGS, get_config, variant_of
from ..errors import ConfigError, WeightsError
from .args import seed

FLOP_NOTE = "1 FLOP = 1 multiply-accumulate (MAC), as in the paper"


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="parameters, MACs and the per-stage table of a config or weights file",
                       description="Parameters and MACs (counted while the NumPy forward runs) of a config, "
                       "with a per-stage table. " + FLOP_NOTE + ".")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help=f"a named config: {', '.join(CONFIGS)}")
    src.add_argument("--weights", help="a weights file (.safetensors or .npz); its config is read from it")
    p.add_argument("--input", metavar="HxW", help="input size (default: the config's, 256x192 for WGNet); "
                   "at most 512x384 pixels in all, since the summary runs a forward at this size")
    p.add_argument("--json", action="store_true", help="print a JSON object (keys config, params, macs, input, ...)")
    p.set_defaults(run=run_info)

    p = sub.add_parser("init", help="write seeded, untrained weights for a config",
                       description="Write seeded, untrained weights (metadata trained: false) for a config, "
                       "as safetensors (or .npz when OUT ends in .npz).")
    p.add_argument("--config", required=True, help=f"a named config: {', '.join(CONFIGS)}")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    p.add_argument("out", metavar="OUT", help="output file")
    p.set_defaults(run=run_init)

    p = sub.add_parser("export", help="turn a PyTorch state_dict of the twin into a weights file (needs torch)",
                       description="Convert a PyTorch checkpoint (a state_dict of refpose's PyTorch twin, "
                       ".pt/.pth) into a refpose weights file. Needs torch.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt/.pth file holding a state_dict")
    p.add_argument("out", metavar="OUT", help="output weights file (.safetensors or .npz)")
    p.add_argument("--config", help="the config the checkpoint is for (default: the named config whose "
                   "keys and shapes match)")
    p.set_defaults(run=run_export)


def parse_size(text: str) -> tuple[int, int]:
    """'256x192' -> (256, 192)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"input size must look like 256x192, got {text!r}") from None
    return h, w


def run_info(args) -> int:
    from tabulate import tabulate

    from ..summary import model_summary
    from ..weights import from_tensors, read_weights

    trained = shapes = None
    if args.weights:
        wf = read_weights(args.weights)
        if wf.config is None:
            raise WeightsError(f"{args.weights}: the file has no config in its metadata")
        from_tensors(wf.tensors, wf.config, impl="reference", source=wf.path)    # as strict as loading
        cfg, trained = wf.config, wf.trained
        shapes = {k: a.shape for k, a in wf.tensors.items()}                    # count the file's own
    else:
        cfg = get_config(args.config)
    s = model_summary(cfg, parse_size(args.input) if args.input else None, shapes)
    if args.weights:
        s["weights"], s["trained"] = args.weights, trained
    if args.json:
        print(json.dumps(s, indent=2, allow_nan=False))
        return 0
    H, W = s["input"]
    print(f"config {s['config']}: input {H}x{W} -> heatmaps {'x'.join(map(str, s['output']))}")
    if args.weights:
        state = {True: "trained", False: "untrained"}.get(trained, "trained or not: not stated")
        print(f"weights {args.weights} ({state})")
    paper, v = "", variant_of(cfg.name)
    if v.paper_params_m is not None:
        paper = f"  (paper: {v.paper_params_m} M"
        paper += f", {v.paper_gflops} GFLOPs)" if v.paper_gflops is not None else ")"
    print(f"params {s['params']:,}   MACs {s['macs']:,} ({s['macs'] / 1e9:.3f} G){paper}")
    rows = [[r["stage"], r["map"], r["channels"], r["blocks"], r["attention"], r["window"], r["heads"] or "-",
             f"{r['params']:,}", f"{r['macs']:,}"] for r in s["stages"]]
    print(tabulate(rows, headers=["stage", "map", "C", "blocks", "attention", "window / patch", "heads",
                                  "params", "MACs"], colalign=("left",) * 7 + ("right",) * 2))
    print("MACs by op kind: " + ", ".join(f"{k} {v:,}" for k, v in s["macs_by_kind"].items()))
    print(FLOP_NOTE + "; elementwise work (norms, activations, softmax, adds) is not included.")
    return 0


def run_init(args) -> int:
    from ..weights import init_weights, save_weights

    cfg = get_config(args.config)
    save_weights(args.out, init_weights(cfg, args.seed), cfg, trained=False)
    print(f"wrote {args.out}: config {cfg.name}, seed {args.seed}, untrained")
    return 0


def run_export(args) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise WeightsError("export needs PyTorch: pip install 'refpose[torch]'") from None
    from ..porting.twin import export_checkpoint

    cfg = export_checkpoint(args.checkpoint, args.out, args.config)
    print(f"wrote {args.out}" + (f": config {cfg.name}" if cfg is not None else ""))
    return 0
