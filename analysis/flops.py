"""`python -m analysis.flops`: the paper's complexity claims, derived and counted, side by side.

Argument parsing and printing only; the figures come from `analysis.attention_report`
and `analysis.network_report`. Bad input is one line on stderr and exit status 2.
"""
from __future__ import annotations

import json
import sys

from refpose.cli import Parser
from refpose.config import CONFIGS
from refpose.errors import ConfigError, RefposeError

from . import FLOP_NOTE, attention_report, network_report, paper_report
from . import formulas as F
from . import paper

PROG = "python -m analysis.flops"


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Eq. (1), Eq. (2) and Table 1 of the paper (section 3.2), each "
               "number derived from its formula and counted from refpose's real attention layers; "
               "or, with --model, a whole network beside Tables 2 and 4; or, with --paper, every checkable "
               "number of the paper with its source and a verdict. " + FLOP_NOTE + ".")
    p.add_argument("--alpha", type=int, nargs="+", default=[4], metavar="A",
                   help="one or several alphas: window 4A x 3A (default 4)")
    p.add_argument("--C", type=int, default=32, help="channels C (default 32, as in the paper's 74%% claim)")
    p.add_argument("--h", type=int, default=F.PAPER_MAP[0], help="map height (default 64: 256 after two stride-2 layers)")
    p.add_argument("--w", type=int, default=F.PAPER_MAP[1], help="map width (default 48: 192 after two stride-2 layers)")
    p.add_argument("--patch", default="4x3", metavar="PHxPW", help="patch of global attention (default 4x3)")
    p.add_argument("--impl", choices=("reference", "fast"), default="reference",
                   help="refpose op implementation that runs while counting (default reference)")
    p.add_argument("--paper", action="store_true", help="every checkable number of the paper (abstract, "
                   "sections 3.2-5, Tables 1-4, the peers of Tables 2 and 3 against their own publications), "
                   "each with its source, our figure and a verdict")
    p.add_argument("--model", metavar="NAME", help=f"whole-network report for a named config: {', '.join(CONFIGS)}")
    p.add_argument("--input", metavar="HxW", help="with --model: input size (default the config's, 256x192)")
    p.add_argument("--plot", metavar="FILE.png", help="draw Flop_WNet_attn, its halves and Eq. (1) against alpha "
                   "(needs matplotlib)")
    p.add_argument("--json", action="store_true", help="print the same data as one JSON object (with several "
                   "--alpha, eq2 and counted are lists in that order)")
    return p


def parse_pair(text: str, what: str) -> tuple[int, int]:
    """'4x3' -> (4, 3)."""
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"{what} must look like 4x3, got {text!r}") from None
    if a <= 0 or b <= 0:
        raise ConfigError(f"{what} must have positive sides, got {text!r}")
    return a, b


def _n(v: int) -> str:
    return f"{v:,}"


# --- attention -----------------------------------------------------------------------------
def print_attention(r: dict) -> None:
    from tabulate import tabulate

    h, w, C = r["h"], r["w"], r["C"]
    ph, pw = r["patch"]
    where = " (the paper's: 256x192 after two stride-2 layers)" if (h, w) == F.PAPER_MAP else ""
    print(f"Self-attention on a {h}x{w} map{where}, C = {C}, patch {ph}x{pw}, one head. {FLOP_NOTE}.\n")

    t = r["eq1_terms"]
    print("Eq. (1)  Flop_MHSA = 3hwC^2 + 2h^2w^2C")
    print(f"         = {_n(t['3hwC^2'])} + {_n(t['2h^2w^2C'])} = {_n(r['eq1'])}\n")

    print("Eq. (2)  Flop_WNet_attn = 6hwC^2 + 2hh'ww'C + 2(ph*pw)h^2w^2C/(h'w')")
    print(f"         The last term is global attention: the (h'/ph)(w'/pw) groups each gather patch k of "
          f"every window, (hw/(h'w'))*ph*pw tokens;\n         each of the hw queries meets that many keys in "
          f"QK^T and again in AV, so 2*hw*(ph*pw*hw/(h'w'))*C. With {ph}x{pw} patches 2*(ph*pw) = "
          f"{2 * ph * pw}{', the constant the paper prints' if (ph, pw) == (4, 3) else ''}.")
    for pair in r["pairs"]:
        (hp, wp), terms = pair["window"], pair["eq2_terms"]
        print(f"  alpha {pair['alpha']}, window {hp}x{wp}: " + " + ".join(_n(v) for v in terms.values())
              + f" = {_n(pair['eq2'])}   ({' + '.join(terms)})")
    print()

    for pair in r["pairs"]:
        c = pair["counted"]
        hp, wp = pair["window"]
        print(f"Counted (alpha {pair['alpha']}, window {hp}x{wp}): refpose.layers.Attention, one head, run on a "
              f"random (1, {h}, {w}, {C}) map inside refpose.count_ops() [{r['impl']} ops]. {FLOP_NOTE}.")
        rows = []
        for kind, title in (("window", "window attention"), ("global", "global attention")):
            got, want = c["by_kind"][kind], pair["formula_by_kind"][kind]
            rows.append([f"{title}, counted", *(_n(got[t]) for t in ("qkv", "qk", "av")),
                         _n(got["qkv"] + got["qk"] + got["av"]), _n(got["proj"])])
            rows.append([f"{title}, formula", *(_n(want[t]) for t in ("qkv", "qk", "av")),
                         _n(want["qkv"] + want["qk"] + want["av"]), _n(want["proj"])])
        rows.append(["pair, counted", _n(c["qkv"]), _n(c["qk"]), _n(c["av"]), _n(c["qkv+qk+av"]), _n(c["proj"])])
        rows.append(["Eq. (2) / 2hwC^2", "", "", "", _n(pair["eq2"]), _n(c["proj_formula"])])
        print(tabulate(rows, headers=["", "qkv", "QK^T", "AV", "qkv+QK^T+AV", "output proj"],
                       colalign=("left",) + ("right",) * 5))
        print(f"counted qkv+QK^T+AV = Eq. (2): {'yes' if c['equals_eq2'] else 'NO'};  "
              f"counted output projections = 2hwC^2 (left out of Eq. (2)): {'yes' if c['equals_proj_formula'] else 'NO'};  "
              f"with them: {_n(c['qkv+qk+av'] + c['proj'])}\n")

    m = r["counted_mhsa"]
    print(f"Counted full-map attention (one {h}x{w} window = MHSA): qkv {_n(m['qkv'])} + QK^T {_n(m['qk'])} + "
          f"AV {_n(m['av'])} = {_n(m['qkv+qk+av'])}; Eq. (1) = {_n(r['eq1'])}: "
          f"{'equal' if m['equals_eq1'] else 'NOT EQUAL'}; output projection {_n(m['proj'])} (hwC^2)\n")

    print_table1(r)
    print_claims(r["claims"], "Prose claims about Table 1 (section 3.2)")


def _verdict(ok) -> str:
    return {True: "agrees", False: "DISAGREES", None: "cannot check"}[ok]


def print_table1(r: dict) -> None:
    from tabulate import tabulate

    C = r["C"]
    print(f"{paper.TABLE1_CAPTION}, recomputed at {r['h']}x{r['w']} with {r['patch'][0]}x{r['patch'][1]} patches; "
          f"paper units M = 1e3 C^2, N = 1e5 C; MACs at C = {C}. {FLOP_NOTE}.")
    if not r["table1_compared"]:
        print("(the paper's Table 1 is for a 64x48 map with 4x3 patches: not compared at this geometry)")
    rows, notes = [], []
    for row in r["table1"]:
        for i, col in enumerate(paper.COLUMNS):
            cell = row[col]
            printed, verdict = cell["paper"], _verdict(cell["agrees"]) if r["table1_compared"] else ""
            if printed is None:
                printed, verdict = ("(merged cell)" if col == "mhsa" and r["table1_compared"] else "-"), ""
            elif cell.get("note"):
                notes.append(cell["note"])
                verdict += f" [{len(notes)}]"
            rows.append([row["alpha"] if i == 0 else "", f"{row['window'][0]}x{row['window'][1]}" if i == 0 else "",
                         paper.COLUMN_TITLES[col], printed, cell["computed"]["text"], _n(cell["computed"]["macs"]),
                         verdict])
    print(tabulate(rows, headers=["alpha", "window", "", "paper", "Eq. (1)/(2)", f"MACs at C={C}", "verdict"],
                   colalign=("right", "left", "left", "left", "left", "right", "left")))
    for i, note in enumerate(notes, 1):
        print(f"  [{i}] {note}")
    rr = r["rounding"]
    print(f"How the paper rounds: of its {rr['numbers']} readable numbers, cutting the formula's value to the "
          f"printed decimals reproduces {rr['explained']['cut']}, rounding {rr['explained']['round']}; so "
          f"agreement is judged by cutting.")
    for d in rr["differ"]:
        print(f"  alpha {d['alpha']} {paper.COLUMN_TITLES[d['column']]}: printed {d['printed']}, exact {d['exact']}, "
              f"cut {d['cut']}, rounded {d['rounded']}")
    print()


def print_claims(claims: list[dict], title: str) -> None:
    from tabulate import tabulate

    if not claims:
        return
    print(f"{title}. {FLOP_NOTE}.")
    print(tabulate([[c["text"], c["computed"], _verdict(c["agrees"])] for c in claims],
                   headers=["the paper says", "computed", "verdict"], maxcolwidths=[44, 76, None]))
    print()


# --- the whole network -------------------------------------------------------------------------
def print_network(r: dict) -> None:
    from tabulate import tabulate

    H, W = r["input"]
    print(f"config {r['config']}: input {H}x{W} -> heatmaps {'x'.join(map(str, r['output']))}. "
          f"Counted by running the NumPy forward inside refpose.count_ops(). {FLOP_NOTE}.\n")
    total = r["macs"]
    rows = [[s["stage"], s["map"], s["channels"], s["blocks"], s["attention"], s["window"], s["heads"] or "-",
             _n(s["params"]), _n(s["macs"]), f"{100 * s['macs'] / total:.1f}%"] for s in r["stages"]]
    rows.append(["total", "", "", "", "", "", "", _n(r["params"]), _n(total), "100%"])
    print(tabulate(rows, headers=["stage", "map", "C", "blocks", "attention", "window / patch", "heads",
                                  "params", "MACs", "share"], disable_numparse=True,
                   colalign=("left",) * 7 + ("right",) * 3))
    print()

    rows = [[k, _n(v), f"{100 * v / total:.1f}%"] for k, v in sorted(r["macs_by_kind"].items(), key=lambda kv: -kv[1])]
    rows.append(["total", _n(total), "100%"])
    print(f"MACs by op kind. {FLOP_NOTE}.")
    print(tabulate(rows, headers=["op kind", "MACs", "share"], colalign=("left", "right", "right"),
                   disable_numparse=True))
    if r["elementwise"]:
        print("Elementwise work (elements touched; not MACs, not in the totals): "
              + ", ".join(f"{k} {_n(v)}" for k, v in sorted(r["elementwise"].items())))
    print()

    rows = []
    for a in r["attention"]:
        got, want = a["counted"], a["formula"]
        grouping = f"{a['window'][0]}x{a['window'][1]}" + (f" / {a['patch'][0]}x{a['patch'][1]}" if a["patch"] else "")
        rows.append([a["stage"], a["kind"], f"{a['map'][0]}x{a['map'][1]}", a["channels"], a["blocks"], grouping,
                     _n(got["qkv"] + got["qk"] + got["av"]), _n(want["qkv"] + want["qk"] + want["av"]),
                     _n(got["proj"]), _n(want["proj"]), "yes" if a["equal"] else "NO"])
    if rows:
        print(f"Attention per stage, counted vs the formulas (blocks x Eq. (2)'s window or global half; "
              f"a window over the whole map is Eq. (1)). {FLOP_NOTE}.")
        print(tabulate(rows, headers=["stage", "kind", "map", "C", "blocks", "window / patch", "qkv+QK^T+AV counted",
                                      "formula", "proj counted", "blocks x hwC^2", "equal"],
                       disable_numparse=True, colalign=("left",) * 6 + ("right",) * 4 + ("left",)))
        print()

    p = r["paper"]
    rows = [["params", f"{r['params'] / 1e6:.3f} M", "-", "-"], ["GFLOPs (G MACs)", f"{total / 1e9:.3f}", "-", "-"]]
    if p["params_M"] is not None:
        rows[0][2] = f"{p['params_M']} M (Table {'2, 4' if p['gflops'] else '4'})"
        rows[0][3] = f"{p['params_diff'] / 1e6:+.3f} M ({100 * p['params_diff'] / (p['params_M'] * 1e6):+.2f}%)"
    if p["gflops"] is not None:
        rows[1][2] = f"{p['gflops']} (Table 2)"
        rows[1][3] = f"{p['gflops_diff']:+.3f} ({100 * p['gflops_diff'] / p['gflops']:+.2f}%)"
    print(f"Beside the paper (params: Table 4, and Table 2 for the full model; GFLOPs: Table 2). {FLOP_NOTE}.")
    print(tabulate(rows, headers=["", "ours (counted)", "paper", "difference"], disable_numparse=True))
    print()
    print_claims(r["claims"], "Prose claims about Table 2 (section 4.2)")


def print_paper(r: dict) -> None:
    from tabulate import tabulate

    print(f"Every checkable number of the paper: what it says, what we compute or what the cited source "
          f"says, and a verdict. {FLOP_NOTE}.\n")
    rows = [[c["where"], c["claim"], c["ours"], _verdict(c["agrees"]) if c["agrees"] is not None
             else "cannot be checked", c["why"]] for c in r["checks"]]
    print(tabulate(rows, headers=["where", "the paper says", "we compute / the source says", "verdict", "why"],
                   maxcolwidths=[22, 34, 34, None, 44], disable_numparse=True))
    print("\nSources:")
    for source in dict.fromkeys(c["source"] for c in r["checks"] if c["source"] not in ("-", "")):
        print(f"  - {source}")
    s = r["summary"]
    print(f"\n{len(r['checks'])} checks: {s['agrees']} agree, {s['disagrees']} disagree, "
          f"{s['cannot_be_checked']} cannot be checked.")
    print("Disagreements:")
    for c in r["checks"]:
        if c["agrees"] is False:
            print(f"  - {c['where']}: paper {c['paper'] or c['claim']}; {c['ours']}" + (f" ({c['why']})" if c["why"] else ""))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.paper:
            if args.model or args.plot or args.input:
                raise ConfigError("--paper checks the whole paper; it does not combine with --model, --input or --plot")
            report = paper_report()
            if args.json:
                print(json.dumps(report, indent=2, allow_nan=False))
            else:
                print_paper(report)
            return 0
        if args.model:
            if args.plot:
                raise ConfigError("--plot draws Table 1; it does not combine with --model")
            from refpose.cli.models import parse_size
            report = network_report(args.model, parse_size(args.input) if args.input else None)
            if args.json:
                print(json.dumps(report, indent=2, allow_nan=False))
            else:
                print_network(report)
            return 0
        if args.input:
            raise ConfigError("--input goes with --model (the attention analysis takes --h and --w)")
        patch = parse_pair(args.patch, "--patch")
        report = attention_report(args.alpha, args.C, args.h, args.w, patch, args.impl)
        if args.plot:
            from .plot import plot_table1
            try:
                plot_table1(report["table1"], report["eq1"], args.C, args.h, args.w, args.plot)
            except ImportError:
                raise ConfigError("--plot needs matplotlib (pip install matplotlib)") from None
            except (OSError, ValueError) as e:
                raise ConfigError(f"--plot {args.plot}: {e}") from None
        if args.json:
            print(json.dumps(report, indent=2, allow_nan=False))
        else:
            print_attention(report)
            if args.plot:
                print(f"plot written to {args.plot}")
        return 0
    except RefposeError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 2


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:              # the reader (e.g. `head`) closed the pipe: stop quietly
        sys.stdout = None
        sys.exit(0)
