"""`refpose bench`: latency of refpose's NumPy and fast paths, PyTorch eager, ONNX Runtime, OpenVINO."""
from __future__ import annotations

import json
import sys

from ..config import CONFIGS
from .args import int_range, positive_int, seed

MAX_BATCH = 64        # images per forward: 64 wgnet inputs and their maps take ~6 GB in the fast path


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="latency of the NumPy path, the fast path, PyTorch, ONNX Runtime and OpenVINO",
                       description="Time refpose's NumPy reference path and fast path and, where installed, "
                       "PyTorch eager (the twin), ONNX Runtime and OpenVINO (the twin exported to ONNX) on the "
                       "same seeded weights and input, alternating the candidates inside each round, in orders "
                       "balanced so that each candidate follows every other one equally often (a Williams design). Prints median and min latency, each candidate's ratio to the "
                       "fast path with a 95 % bootstrap interval (this run's own noise), MACs per second, the machine's numpy sgemm throughput from the same run and "
                       "each candidate's peak memory. --profile shows where the fast path's time goes instead.")
    p.add_argument("--config", default="wgnet", help=f"a named config: {', '.join(CONFIGS)} (default wgnet)")
    p.add_argument("--batch", type=int_range(1, MAX_BATCH), default=1, help=f"images per forward, 1..{MAX_BATCH} (default 1)")
    p.add_argument("--threads", type=positive_int, default=2, help="threads for every library (default 2)")
    p.add_argument("--runs", type=positive_int, default=20, help="timed rounds; medians over them (default 20)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the weights and the input (default 0)")
    p.add_argument("--aa", action="store_true", help="A/A check: the fast path against a second copy of "
                   "itself; a fair harness reads 1.00 +- 0.05 (on a busy machine, look at the interval too)")
    p.add_argument("--profile", action="store_true", help="instead of the latency table, show where the time "
                   "goes: the fast path per op kind and per stage and ONNX Runtime's own per-node profile "
                   "summed by op type (--runs forwards each)")
    p.add_argument("--torch-first", action="store_true", help="the porter's case: the fast path in fresh processes "
                   "that imported torch before refpose (one running torch's forward right before each of refpose's, "
                   "one leaving torch idle) against one without torch; ratios to the one without torch")
    p.add_argument("--cold", action="store_true", help="instead of the latency table, the first run's cost: a fresh "
                   "process with an empty kernel cache (import, build, first forward, and the compile time of each "
                   "kernel), then a fresh process on the cache it filled")
    p.add_argument("--no-numpy", action="store_true", help="leave out the NumPy reference path (at batch 8 one "
                   "of its forwards takes as long as a whole round of the others)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS measurement (one child process "
                   "per candidate, after the timing)")
    p.add_argument("--int8", action="store_true", help="also time refpose's int8 fast path, and ONNX Runtime and "
                   "OpenVINO on the same model as QDQ ONNX (the seeded weights quantized; docs/int8.md)")
    p.add_argument("--json", action="store_true", help="print the results as a JSON object")
    p.set_defaults(run=run_bench)


def run_bench(args) -> int:
    from ..porting.bench import check_args, format_profile, format_result, run_bench as bench, run_profile
    from ..config import get_config

    check_args(args.batch, args.threads, args.runs)
    get_config(args.config)                  # an unknown config fails here, before anything is built
    progress = _progress_line() if sys.stderr.isatty() else _progress_plain()
    if args.cold:
        from ..porting.bench.cold import format_cold, run_cold

        try:
            result = run_cold(args.config, args.batch, seed=args.seed, progress=progress)
        finally:
            progress.close()
        print(json.dumps(result, indent=2, allow_nan=False) if args.json else format_cold(result))
        return 0
    try:
        if args.profile:
            result = run_profile(args.config, args.batch, args.threads, args.runs, seed=args.seed, progress=progress)
        else:
            result = bench(args.config, args.batch, args.threads, args.runs, aa=args.aa, seed=args.seed,
                           memory=not args.no_memory, progress=progress, torch_first=args.torch_first,
                           numpy=not args.no_numpy, int8=args.int8)
    finally:
        progress.close()
    if args.profile:
        print(json.dumps(result, indent=2, allow_nan=False) if args.json else format_profile(result))
        return 0
    print(json.dumps(result, indent=2, allow_nan=False) if args.json else format_result(result))
    bad = [c["name"] for c in result["candidates"] if not c["agrees"]]
    if bad:
        sys.stderr.write(f"refpose bench: outputs disagree with the reference: {', '.join(bad)}\n")
    if bad or (args.aa and not result["aa_fair"]):
        return 1
    return 0


class _progress_line:
    """One line on stderr, rewritten in place."""

    def __init__(self):
        self.width = 0

    def __call__(self, text: str) -> None:
        text = f"refpose bench: {text}"
        sys.stderr.write("\r" + text.ljust(self.width))
        sys.stderr.flush()
        self.width = len(text)

    def close(self):
        if self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


class _progress_plain(_progress_line):
    """Not a terminal: a line per step, rounds every 5."""

    def __call__(self, text: str) -> None:
        if text.startswith("round ") and int(text.split()[1].split("/")[0]) % 5 not in (0, 1):
            return
        sys.stderr.write(f"refpose bench: {text}\n")

    def close(self):
        pass
