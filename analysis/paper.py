"""What the paper prints, as data, and how to read it against the formulas, our counts and its sources.

Transcribed from the paper (section 3.2 Table 1 and the paragraph after it; section 4.2
Table 2 and its prose; and, for `--paper`, the abstract, section 4.1, Tables 3 and 4 and
the conclusion). The peers of Tables 2 and 3 are set beside the figures of their own
publications, each with its source. Printed text is kept verbatim, including the `$...$`
math markup of the text version; `read_cell` strips it.

How the paper rounds: every number in Table 1 that matches its formula equals the exact
value *cut* to the printed decimals, never rounded (11.796N is printed 11.7N, 47.186N
47.1N, 189.481N 189.4N, 23.593N 23.5N); `rounding_rule` shows this from the data, and
`agrees` uses it: a printed p with d decimals agrees with x iff p <= x < p + 10^-d.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction

from refpose.errors import ConfigError

from . import formulas as F

# --- Table 1 (section 3.2) ---------------------------------------------------------------
TABLE1_CAPTION = "Table 1. Comparison in Flop of WNet with MHSA"
TABLE1_MAP = F.PAPER_MAP
TABLE1_PATCH = F.PAPER_PATCH
COLUMNS = ("win", "glo", "wnet", "mhsa")
COLUMN_TITLES = {"win": "Flop_win_attn", "glo": "Flop_glo_attn", "wnet": "Flop_WNet_attn", "mhsa": "Flop_MHSA"}

# One dict per printed row. The MHSA column is one cell merged over all five rows; the
# text version prints it once, in the middle (alpha = 4) row, cut after "18".
TABLE1 = (
    dict(alpha=1, window="(4, 3)", win="$9.2M + 0.7N$", glo="$9.2M + 188.7N$", wnet="$18M + 189.4N$", mhsa=None),
    dict(alpha=2, window="(8, 6)", win="$9.2M + 2.9N$", glo="$9.2M + 47.1N$", wnet="$18M + 50.1N$", mhsa=None),
    dict(alpha=4, window="(16, 12)", win="$9.2M + 11.7N$", glo="$9.2M + 0.7N$", wnet="$18M + 23.5N$",
         mhsa="$9.2M + 18$"),
    dict(alpha=8, window="(32, 24)", win="$9.2M + 47.1N$", glo="$9.2M + 2.9N$", wnet="$18M + 50.1N$", mhsa=None),
    dict(alpha=16, window="(64, 48)", win="$9.2M + 188.7N$", glo="—", wnet="$9.2M + 188.7N$", mhsa=None),
)

# Our reading of why a printed cell says what it says, shown beside it.
NOTES = {
    (2, "wnet"): "the printed parts 2.9N + 47.1N add to 50.0N, but the total is cut from the exact "
                 "2.949N + 47.186N = 50.135N, so 50.1N is right",
    (4, "glo"): "typo: 0.7N is the alpha=1 window term (12 keys); at alpha=4 a global group has "
                "192 tokens, as many as a window, so the term is 11.796N; the printed total "
                "23.5N (= 2 x 11.796N, cut) was computed with the right value",
    (4, "mhsa"): "one cell merged over all rows, cut after '18' in the text: its M term 9.2 agrees, "
                 "its N term cannot be read (188.7N would agree)",
    (16, "glo"): "the paper drops global attention when the window is the whole map; Eq. (2) keeps "
                 "it (256 groups of one 4x3 patch each)",
    (16, "wnet"): "the paper prints window attention alone (which is Eq. (1) here); Eq. (2) as "
                  "written adds the global half",
}
MERGED_NOTE = "merged cell, printed once (see alpha = 4)"

CLAIM_GREATER = "When α is 1, the window size is (4, 3), which is greater than the calculation amount of MHSA."
CLAIM_SMALLER = "When α is 2, 4, and 8, the calculation amount is smaller than the latter."
CLAIM_DEGENERATES = "When α is 16, the method degenerates into MHSA."
CLAIM_SMALLEST = "When α is 4, the amount of calculation is the smallest"
CLAIM_REDUCTION = ("assume the value of feature dimension C is 32, which can reduce the amount of "
                   "calculation by 74% compared with the ordinary attention mechanism.")
REDUCTION_C, REDUCTION_PERCENT = 32, 74

# --- Table 2 (section 4.2): #Params (M) and GFLOPs, and the prose about them --------------
TABLE2 = {   # method: (params in M, GFLOPs) as printed
    "HRNet-W32": (28.5, 7.1), "TokenPose-S": (6.2, 11.6), "TokenPose-B": (13.5, 5.7),
    "HRFormer-S": (7.8, 6.2), "Ours": (5.8, 3.6),
}
CLAIM_PARAMS = "our model has 79% fewer parameters than the HRNet-w32 [9] pure convolutional network"
CLAIM_GFLOPS = ("our improved self-attentive mechanism is less computationally intensive, 36% and 41% "
                "lower compared to TokenPose-B [14] and HRFormer-S [15], respectively")


# --- reading printed numbers -------------------------------------------------------------
_TERM = re.compile(r"^(\d+(?:\.\d+)?)\s*([MN]?)$")


def read_cell(text: str | None) -> dict | None:
    """'$18M + 50.1N$' -> {'text': '18M + 50.1N', 'terms': {'M': '18', 'N': '50.1'}, 'unreadable': []}.

    '—' reads as no terms (the paper leaves the attention out); a number without its
    unit (a cell cut short in the text) goes to `unreadable`. None (no cell) stays None.
    """
    if text is None:
        return None
    plain = text.replace("$", "").strip()
    out = {"text": plain, "terms": {}, "unreadable": []}
    if plain in ("—", "-", "–"):
        return out
    for part in plain.split("+"):
        m = _TERM.match(part.strip())
        if m and m.group(2):
            out["terms"][m.group(2)] = m.group(1)
        else:
            out["unreadable"].append(part.strip())
    return out


def _decimals(printed: str) -> int:
    return len(printed.split(".")[1]) if "." in printed else 0


def cut(x: Fraction, d: int) -> Fraction:
    """x cut (truncated towards zero) to d decimals: how the paper prints (x >= 0)."""
    return Fraction(math.floor(x * 10**d), 10**d)


def rounded(x: Fraction, d: int) -> Fraction:
    """x rounded half up to d decimals."""
    return Fraction(math.floor(x * 10**d + Fraction(1, 2)), 10**d)


def agrees(printed: str, x: Fraction, rule=cut) -> bool:
    """Does a printed number say x, at the precision it is printed with, under `rule`?"""
    d = _decimals(printed)
    return rule(x, d) == Fraction(printed)


def fmt_units(cost: F.Cost, decimals: int = 3) -> str:
    """A cost in the paper's units, rounded to `decimals` (more than the paper prints)."""
    return f"{float(cost.M):.{decimals}f}M + {float(cost.N):.{decimals}f}N"


# --- Table 1 -----------------------------------------------------------------------------
def table1_costs(alpha: int, h: int, w: int, patch: tuple[int, int]) -> dict[str, F.Cost]:
    """The four Table 1 quantities for one alpha, from the formulas."""
    window = F.alpha_window(alpha)
    return {"win": F.window_attention(h, w, window), "glo": F.global_attention(h, w, window, patch),
            "wnet": F.wnet_attention(h, w, window, patch), "mhsa": F.mhsa(h, w)}


def compare_cell(printed: str | None, cost: F.Cost, C: int, rule=cut) -> dict:
    """One Table 1 cell: the printed text, the formula's value, and whether they agree.

    `agrees` is None when there is nothing to compare (no cell) or the cell cannot be
    read; '—' (left out) disagrees with any non-zero cost.
    """
    computed = {"M": float(cost.M), "N": float(cost.N), "text": fmt_units(cost), "macs": cost.at(C)}
    cell = read_cell(printed)
    if cell is None:
        return {"paper": None, "computed": computed, "agrees": None}
    exact = {"M": cost.M, "N": cost.N}
    term_ok = [agrees(p, exact[u], rule) for u, p in cell["terms"].items()]
    if not cell["terms"] and not cell["unreadable"]:
        ok = cost.at(1) == 0
    elif not all(term_ok):
        ok = False
    elif cell["unreadable"]:
        ok = None
    else:
        ok = set(cell["terms"]) == {u for u in "MN" if exact[u]}
    return {"paper": cell["text"], "computed": computed, "agrees": ok}


def table1(C: int, h: int = TABLE1_MAP[0], w: int = TABLE1_MAP[1], patch: tuple[int, int] = TABLE1_PATCH,
           alphas: tuple[int, ...] = F.PAPER_ALPHAS) -> list[dict]:
    """Table 1 recomputed at (h, w, patch), MACs at C, beside the printed values.

    The printed values are compared only at the paper's own geometry (64x48, 4x3
    patches); an alpha whose window does not divide the map is left out.
    """
    paper_rows = {r["alpha"]: r for r in TABLE1} if (h, w) == TABLE1_MAP and tuple(patch) == TABLE1_PATCH else {}
    rows = []
    for alpha in alphas:
        window = F.alpha_window(alpha)
        try:
            F.check_shapes(h, w, C, window, patch)
        except ConfigError:
            continue
        costs = table1_costs(alpha, h, w, patch)
        printed = paper_rows.get(alpha, {})
        row = {"alpha": alpha, "window": list(window), "paper_window": printed.get("window"),
               "window_agrees": printed["window"] == f"({window[0]}, {window[1]})" if printed else None}
        for col in COLUMNS:
            row[col] = compare_cell(printed.get(col), costs[col], C)
            if printed:
                note = NOTES.get((alpha, col)) or (MERGED_NOTE if col == "mhsa" and printed[col] is None else None)
                if note:
                    row[col]["note"] = note
        rows.append(row)
    return rows


def rounding_rule() -> dict:
    """Which rule (cut or round half up) explains the printed Table 1 numbers.

    Counts, over every readable number, how many each rule reproduces from the formula,
    and lists the numbers on which the two rules differ.
    """
    h, w = TABLE1_MAP
    n, explained, differ = 0, {"cut": 0, "round": 0}, []
    for r in TABLE1:
        costs = table1_costs(r["alpha"], h, w, TABLE1_PATCH)
        for col in COLUMNS:
            cell = read_cell(r[col])
            if cell is None:
                continue
            for unit, printed in cell["terms"].items():
                x = getattr(costs[col], unit)
                d = _decimals(printed)
                n += 1
                explained["cut"] += agrees(printed, x, cut)
                explained["round"] += agrees(printed, x, rounded)
                if cut(x, d) != rounded(x, d):
                    differ.append({"alpha": r["alpha"], "column": col, "printed": f"{printed}{unit}",
                                   "exact": f"{float(x):.4f}{unit}",
                                   "cut": f"{float(cut(x, d)):.{d}f}{unit}",
                                   "rounded": f"{float(rounded(x, d)):.{d}f}{unit}"})
    rule = max(explained, key=explained.get)
    return {"rule": rule, "numbers": n, "explained": explained, "differ": differ}


# --- the prose claims ---------------------------------------------------------------------
def _pct(x: Fraction) -> str:
    return f"{float(100 * x):.1f}%"


def claims(C: int) -> list[dict]:
    """Each prose claim about Table 1, what the formulas give, and a verdict.

    Claims that name no C are judged at the given C (with the range of C over which they
    hold); the 74% claim names C = 32 and is judged there.
    """
    h, w = TABLE1_MAP
    patch = TABLE1_PATCH
    full = F.mhsa(h, w)
    wnet = {a: F.wnet_attention(h, w, F.alpha_window(a), patch) for a in F.PAPER_ALPHAS}
    out = []

    # alpha = 1 costs more than MHSA: both coefficients at least as large, one larger
    w1 = wnet[1]
    out.append({"text": CLAIM_GREATER,
                "computed": f"Eq. (2) = {fmt_units(w1)} vs Eq. (1) = {fmt_units(full)}: larger for every C > 0",
                "agrees": w1.c2 >= full.c2 and w1.c1 >= full.c1 and w1 != full})

    # alpha = 2, 4, 8 cost less than MHSA: true only below a C threshold
    limits = {a: F.below_mhsa_until(h, w, F.alpha_window(a), patch) for a in (2, 4, 8)}
    at_C = {a: Fraction(wnet[a].at(C), full.at(C)) for a in (2, 4, 8)}
    out.append({"text": CLAIM_SMALLER,
                "computed": "; ".join(f"alpha={a}: {_pct(at_C[a])} of Eq. (1) at C={C}, smaller while "
                                      f"C < {float(limits[a]):g}" for a in (2, 4, 8)),
                "agrees": all(wnet[a].at(C) < full.at(C) for a in (2, 4, 8))})

    # alpha = 16: the one window is the whole map, so window attention is Eq. (1)
    win16 = F.window_attention(h, w, F.alpha_window(16))
    out.append({"text": CLAIM_DEGENERATES,
                "computed": f"window attention over one {h}x{w} window = Eq. (1) = {fmt_units(win16)}, exactly; "
                            f"Eq. (2) as written keeps the global half too: {fmt_units(wnet[16])}",
                "agrees": win16 == full})

    # alpha = 4 is the cheapest; the exact optimum of 2hw*h'w' + 2(ph pw)(hw)^2/(h'w') is h'w' = sqrt(ph pw hw)
    best = min(F.PAPER_ALPHAS, key=lambda a: wnet[a].at(C))
    optimum = math.sqrt(patch[0] * patch[1] * h * w)       # h'w' minimising 2hw*h'w' + 2(ph pw)(hw)^2/(h'w')
    alpha_opt = math.sqrt(optimum / 12)                    # (4 alpha)(3 alpha) = h'w'
    out.append({"text": CLAIM_SMALLEST,
                "computed": f"cheapest of alpha in {{{', '.join(map(str, F.PAPER_ALPHAS))}}} at C={C}: alpha={best} "
                            f"({fmt_units(wnet[best])}); for any C the best window area is sqrt(ph*pw*h*w) = "
                            f"{optimum:g}, i.e. alpha = {alpha_opt:g}",
                "agrees": best == 4})

    # 74% at C = 32
    Cr = REDUCTION_C
    window = F.alpha_window(4)
    bare = 1 - Fraction(F.eq2(h, w, Cr, window, patch), F.eq1(h, w, Cr))
    proj = F.projection(h, w).at(Cr)
    with_proj = 1 - Fraction(F.eq2(h, w, Cr, window, patch) + 2 * proj, F.eq1(h, w, Cr) + proj)
    printed = 1 - Fraction((Fraction("18") * 1000 * Cr**2 + Fraction("23.5") * 100000 * Cr),
                           (Fraction("9.2") * 1000 * Cr**2 + Fraction("188.7") * 100000 * Cr))
    target = 1 - Fraction(REDUCTION_PERCENT, 100)
    # C at which 1 - Eq.(2)/Eq.(1) is 74%: (a2 C + a1) = t (b2 C + b1)
    a, b, p = wnet[4], full, F.projection(h, w)
    C_bare = (target * b.c1 - a.c1) / (a.c2 - target * b.c2)
    C_proj = (target * b.c1 - a.c1) / (a.c2 + 2 * p.c2 - target * (b.c2 + p.c2))
    out.append({"text": CLAIM_REDUCTION,
                "computed": f"1 - Eq.(2)/Eq.(1) at alpha=4, C={Cr}: {_pct(bare)} (= {bare}); with the output "
                            f"projections (2hwC^2 vs hwC^2): {_pct(with_proj)}; from the printed table "
                            f"cells: {_pct(printed)}. {REDUCTION_PERCENT}% is reached only at C = "
                            f"{float(C_bare):.0f} (Eq. (1)/(2)) or C = {float(C_proj):.0f} (with projections); "
                            f"cut like the paper's other numbers, {_pct(bare)} prints as "
                            f"{math.floor(100 * bare)}%",
                "agrees": REDUCTION_PERCENT in (math.floor(100 * bare), math.floor(100 * with_proj))})
    return out


def network_claims(params: int, macs: int) -> list[dict]:
    """Table 2's prose percentages, from the paper's own Table 2 numbers and from our counts."""
    ours_p, ours_g = TABLE2["Ours"]
    hr_p = TABLE2["HRNet-W32"][0]
    tb_g, hf_g = TABLE2["TokenPose-B"][1], TABLE2["HRFormer-S"][1]
    fewer = 1 - Fraction(str(ours_p)) / Fraction(str(hr_p))
    fewer_counted = 1 - Fraction(params, 10**6) / Fraction(str(hr_p))
    lower_tb = 1 - Fraction(str(ours_g)) / Fraction(str(tb_g))
    lower_hf = 1 - Fraction(str(ours_g)) / Fraction(str(hf_g))
    counted_tb = 1 - Fraction(macs, 10**9) / Fraction(str(tb_g))
    counted_hf = 1 - Fraction(macs, 10**9) / Fraction(str(hf_g))
    return [
        {"text": CLAIM_PARAMS,
         "computed": f"from Table 2: 1 - {ours_p}/{hr_p} = {_pct(fewer)}; with our count {params:,}: "
                     f"{_pct(fewer_counted)}",
         "agrees": math.floor(100 * fewer) == 79},
        {"text": CLAIM_GFLOPS,
         "computed": f"from Table 2: 1 - {ours_g}/{tb_g} = {_pct(lower_tb)}, 1 - {ours_g}/{hf_g} = {_pct(lower_hf)}; "
                     f"with our count {macs / 1e9:.3f} G: {_pct(counted_tb)}, {_pct(counted_hf)}",
         "agrees": math.floor(100 * lower_tb) == 36 and math.floor(100 * lower_hf) == 41},
    ]


# =========================================================================================
# Every other checkable number of the paper (`python -m analysis.flops --paper`)
# =========================================================================================
# Each check is a dict: `where` (table / section / sentence), `claim` (what the paper says),
# `paper` (its figure), `ours` (what we compute, or what the cited source says), `source`
# (where `ours` comes from), `agrees` (True / False / None = cannot be checked) and `why`.
# The judgement functions below are pure: counted sizes come in as arguments.

TABLE2_COLUMNS = ("params", "gflops", "time", "AP", "AP50", "AP75", "APM", "APL")
# Table 2 as printed: #Params (M; the header says MB), GFLOPs, Time (ms), AP columns (%).
# '*' after HRFormer-S's AP figures is kept out of the numbers (the paper does not say what it marks).
TABLE2_ROWS = {
    "HRNet-W32":   dict(params="28.5", gflops="7.1", time="36.8", AP="74.4", AP50="90.5", AP75="81.9", APM="70.8", APL="81.1"),
    "TokenPose-S": dict(params="6.2", gflops="11.6", time="28.7", AP="73.5", AP50="89.4", AP75="80.3", APM="69.8", APL="80.5"),
    "TokenPose-B": dict(params="13.5", gflops="5.7", time="30.5", AP="74.7", AP50="89.8", AP75="81.4", APM="71.3", APL="81.4"),
    "HRFormer-S":  dict(params="7.8", gflops="6.2", time="70.1", AP="75.6", AP50="90.8", AP75="82.8", APM="71.7", APL="82.6"),
    "Ours":        dict(params="5.8", gflops="3.6", time="24.0", AP="72.1", AP50="89.6", AP75="79.5", APM="68.7", APL="79.6"),
}

# The peers' own figures on COCO val2017 (person detector AP 56.4, flip test), each with its source.
# Only figures read in the source are here; a column a source does not give is absent.
HRNET_README = ("leoxiaobin/deep-high-resolution-net.pytorch (official code of Sun et al., CVPR 2019), "
                "README.md, 'Results on COCO val2017', rows pose_hrnet_w32")
HRFORMER_README = ("HRNet/HRFormer (official code of Yuan et al., NeurIPS 2021), README.md, "
                   "'Results on COCO val2017' (the AP^M / AP^L columns are headed AR^M / AR^L there)")
PEER_COCO = {
    "HRNet-W32": {"source": HRNET_README, "named": "HRNet-W32 256x192", "configs": {
        "HRNet-W32 256x192": dict(params="28.5", gflops="7.1", AP="74.4", AP50="90.5", AP75="81.9", APM="70.8", APL="81.0"),
        "HRNet-W32 384x288": dict(params="28.5", gflops="16.0", AP="75.8", AP50="90.6", AP75="82.5", APM="72.0", APL="82.7"),
    }},
    "HRFormer-S": {"source": HRFORMER_README, "named": "HRFormer-S 256x192", "configs": {
        "HRFormer-S 256x192": dict(AP="74.0", AP50="90.2", AP75="81.2", APM="70.4", APL="80.7"),
        "HRFormer-S 384x288": dict(AP="75.6", AP50="90.3", AP75="82.2", APM="71.6", APL="82.5"),
        "HRFormer-B 256x192": dict(AP="75.6", AP50="90.8", AP75="82.8", APM="71.7", APL="82.6"),
        "HRFormer-B 384x288": dict(AP="77.2", AP50="91.0", AP75="83.6", APM="73.2", APL="84.2"),
    }},
}
# What could not be found, and what was found instead (so the verdict says why).
PEER_NOT_FOUND = {
    "HRNet-W32": {},
    "HRFormer-S": {"params": "the official README gives no parameter count for the pose models",
                   "gflops": "the official README gives no GFLOPs for the pose models"},
    "TokenPose-S": {c: "source not found: the official repository (leeyegy/TokenPose) README has no results "
                       "table, and the paper's table was not available; the paper's abstract (arXiv 2104.03516) "
                       "gives TokenPose-S 72.5 AP, not the row's 73.5, and the repository has two -S configs "
                       "(tokenpose_s_v1, patch 4x3; tokenpose_s_v2, patch 2x2), so the row may be the other one"
                    for c in ("params", "gflops", "AP", "AP50", "AP75", "APM", "APL")},
    "TokenPose-B": {c: "source not found: the official repository (leeyegy/TokenPose) README has no results "
                       "table, and the paper's table was not available"
                    for c in ("params", "gflops", "AP", "AP50", "AP75", "APM", "APL")},
}

# Table 3 (MPII val, PCKh@0.5, %) as printed; '*' marks kept out of the numbers.
TABLE3_COLUMNS = ("params", "Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean")
TABLE3_ROWS = {
    "SimpleBaseline-50":  dict(params="34.0", Head="96.4", Shoulder="95.3", Elbow="89.0", Wrist="88.4", Hip="88.4", Knee="84.0", Ankle="79.6", Mean="88.5"),
    "SimpleBaseline-101": dict(params="53.0", Head="96.9", Shoulder="95.9", Elbow="89.5", Wrist="84.4", Hip="88.4", Knee="84.5", Ankle="80.7", Mean="89.1"),
    "HRNet-W32":          dict(params="28.5", Head="96.9", Shoulder="96.0", Elbow="90.6", Wrist="85.8", Hip="88.7", Knee="86.6", Ankle="82.6", Mean="90.1"),
    "TokenPose-B":        dict(params="13.5", Head="97.1", Shoulder="95.8", Elbow="90.7", Wrist="85.8", Hip="89.2", Knee="86.2", Ankle="82.7", Mean="90.2"),
    "Ours":               dict(params="5.8", Head="96.8", Shoulder="95.6", Elbow="90.4", Wrist="85.4", Hip="88.6", Knee="85.6", Ankle="80.6", Mean="89.2"),
}
HRNET_README_MPII = ("leoxiaobin/deep-high-resolution-net.pytorch README.md, 'Results on MPII val' "
                     "(flip test, 256x256); parameters from its COCO table (17-joint heads; a 16-joint head "
                     "differs by a few hundred parameters, far below 0.1 M)")
PEER_MPII = {
    "SimpleBaseline-50": {"source": HRNET_README_MPII, "named": "pose_resnet_50", "configs": {"pose_resnet_50": dict(
        params="34.0", Head="96.4", Shoulder="95.3", Elbow="89.0", Wrist="83.2", Hip="88.4", Knee="84.0", Ankle="79.6", Mean="88.5")}},
    "SimpleBaseline-101": {"source": HRNET_README_MPII, "named": "pose_resnet_101", "configs": {"pose_resnet_101": dict(
        params="53.0", Head="96.9", Shoulder="95.9", Elbow="89.5", Wrist="84.4", Hip="88.4", Knee="84.5", Ankle="80.7", Mean="89.1")}},
    "HRNet-W32": {"source": HRNET_README_MPII, "named": "pose_hrnet_w32", "configs": {"pose_hrnet_w32": dict(
        params="28.5", Head="97.1", Shoulder="95.9", Elbow="90.3", Wrist="86.4", Hip="89.1", Knee="87.1", Ankle="83.3", Mean="90.3")}},
}
PEER_MPII_NOT_FOUND = {
    "TokenPose-B": "source not found: the official repository's only MPII config is TokenPose-L/D6 "
                   "(experiments/mpii/tokenpose/tokenpose_l_D6_256x256_patch44_dim192_depth6.yaml); no "
                   "TokenPose-B MPII result was found",
}

TABLE4 = {   # model: (window attention, global attention, #Params M, mAP %) as printed
    "Baseline": (True, True, "5.8", "72.1"), "Model-A": (True, False, "4.9", "70.4"),
    "Model-B": (False, True, "4.0", "69.8"), "Model-C": (False, False, "3.2", "68.2"),
}
TABLE4_CONFIGS = {"Baseline": "wgnet", "Model-A": "wgnet-a", "Model-B": "wgnet-b", "Model-C": "wgnet-c"}
MPII_CONFIG = "wgnet-mpii"


def _F(text: str) -> Fraction:
    return Fraction(text)


def printed_agrees(printed: str, x) -> bool:
    """A printed figure agrees with an exact value x if x cut or rounded to its decimals gives it."""
    x = Fraction(x)
    return agrees(printed, x, cut) or agrees(printed, x, rounded)


def percent_agrees(claimed: int, x: Fraction) -> bool:
    """'N%' agrees with a fraction x if 100x cut or rounded to an integer is N."""
    return math.floor(100 * x) == claimed or math.floor(100 * x + Fraction(1, 2)) == claimed


def _check(where, claim, paper, ours, source, ok, why="") -> dict:
    return dict(where=where, claim=claim, paper=paper, ours=ours, source=source, agrees=ok, why=why)


def _table(col_titles: dict, row: str, col: str) -> str:
    return f"{row}, {col_titles.get(col, col)}"


T2_TITLES = {"params": "#Params (M)", "gflops": "GFLOPs", "time": "Time (ms)", "AP50": "AP50", "AP75": "AP75",
             "APM": "AP^M", "APL": "AP^L"}
T3_TITLES = {"params": "#Params (M)"}


def _peer_checks(table: str, printed: dict, peers: dict, not_found: dict, columns, titles) -> list[dict]:
    """One check per (peer row, column): the printed figure against the named configuration's
    in the peer's own source, and which configuration (if any) the row matches instead.
    A row with no source at all is one check."""
    out = []
    for row, cols in printed.items():
        if row == "Ours":
            continue
        peer = peers.get(row)
        missing = not_found.get(row, {})
        if peer is None:
            why = missing if isinstance(missing, str) else next(iter(missing.values()), "")
            shown = [c for c in columns if c in cols and c != "time"]
            out.append(_check(f"Table {table}, {row} (every column)", f"{row}: " + ", ".join(cols[c] for c in shown),
                              ", ".join(cols[c] for c in shown), "-", "-", None,
                              why or "cannot be checked: source not found"))
            continue
        for col in columns:
            if col not in cols or col == "time":
                continue
            where = f"Table {table}, {_table(titles, row, col)}"
            p = cols[col]
            if col not in peer["configs"][peer["named"]]:
                out.append(_check(where, f"{row}: {p}", p, "-", "-", None,
                                  "cannot be checked: " + missing.get(col, "source not found")))
                continue
            named = peer["configs"][peer["named"]][col]
            others = [name for name, c in peer["configs"].items() if name != peer["named"] and c.get(col) == p]
            ok = named == p
            why = "" if ok else f"the source gives {named} for {peer['named']}" + \
                (f"; {p} is the figure of {', '.join(others)}" if others else "")
            out.append(_check(where, f"{row}: {p}", p, f"{named} ({peer['named']})", peer["source"], ok, why))
    return out


def row_matches(printed: dict, peer: dict) -> list[str]:
    """The configurations of a peer's source whose every given figure equals the printed row's."""
    cols = [c for c in printed if c != "time"]
    return [name for name, c in peer["configs"].items()
            if all(c[k] == printed[k] for k in cols if k in c) and any(k in c for k in cols)]


def mpii_mean_estimate(row: dict) -> Fraction:
    """(Head + 2 x the six left/right columns) / 13: the Mean if every joint had the same visible
    count and upper neck (counted in MPII's Mean, not printed) were left out."""
    pairs = ("Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle")
    return (_F(row["Head"]) + 2 * sum(_F(row[c]) for c in pairs)) / 13


def paper_checks(counts: dict) -> list[dict]:
    """Every checkable number of the paper outside Table 1, with a verdict.

    counts: {"params": {config name: trainable parameters}, "macs": {config name: MACs at the
    config's input}} counted from refpose's own models (a config missing from it is reported
    as not counted).
    """
    params, macs = counts["params"], counts["macs"]
    t2 = {k: {c: _F(v) for c, v in r.items()} for k, r in TABLE2_ROWS.items()}
    ours, hf = t2["Ours"], t2["HRFormer-S"]
    out = []

    # --- the abstract -------------------------------------------------------------------
    fewer = 1 - ours["params"] / hf["params"]
    lower = 1 - ours["gflops"] / hf["gflops"]
    faster = hf["time"] / ours["time"]
    gap = hf["AP"] - ours["AP"]
    out.append(_check("Abstract", "parameters reduced by 25% compared to HRFormer", "25%",
                      f"1 - 5.8/7.8 = {_pct(fewer)} (Table 2)", "Table 2", percent_agrees(25, fewer)))
    out.append(_check("Abstract", "computational complexity reduced by 41% compared to HRFormer", "41%",
                      f"1 - 3.6/6.2 = {_pct(lower)} (Table 2)", "Table 2", percent_agrees(41, lower)))
    out.append(_check("Abstract", "inference time reduced by nearly two times compared to HRFormer", "~2x",
                      f"70.1/24.0 = {float(faster):.2f}x (Table 2); 74.1/24.1 = {74.1 / 24.1:.2f}x (section 4.2)",
                      "Table 2, section 4.2", False,
                      "both of the paper's own timings give about three times, not nearly two"))
    out.append(_check("Abstract", "at the cost of only 3.5% accuracy (against HRFormer)", "3.5%",
                      f"75.6 - 72.1 = {float(gap):.1f} AP points (Table 2); relative {_pct(gap / hf['AP'])}",
                      "Table 2", gap == Fraction("3.5"),
                      "absolute AP points; but Table 2's 75.6 for HRFormer-S is the HRFormer-B 256x192 figure "
                      "of the HRFormer repository (see Table 2 below): against HRFormer-S 256x192 (74.0) the gap "
                      "is 1.9 points"))

    # --- section 4.1 --------------------------------------------------------------------
    out.append(_check("Section 4.1", "the MPII data set has 16 key points", "16",
                      "16 (refpose.keypoints.MPII; MMPose TopDownMpiiDataset)", "MMPose topdown_mpii_dataset.py",
                      True))
    out.append(_check("Section 4.1", "5,000 data in the (COCO) verification set", "5,000",
                      "5,000 images in val2017", "cocodataset.org/#download ('2017 Val images [5K/1GB]')", True,
                      "5,000 images; the persons in them are more"))
    out.append(_check("Section 4.1", "163,961 COCO training data, 149,813 after cleaning; MPII 14679 training "
                      "and 2,729 validation data", "163,961; 149,813; 14679; 2,729", "-", "-", None,
                      "cannot be checked: the paper does not say what it counts (images or persons) or how it "
                      "cleans, and no source giving these counts was found"))

    # --- section 4.2 and the conclusion -------------------------------------------------
    out.append(_check("Section 4.2", "finally obtain 72.1% of mAP in the validation data set", "72.1",
                      "72.1 (Table 2 AP, Table 4 Baseline)", "Tables 2 and 4", True))
    for c in network_claims(params.get("wgnet", 0), macs.get("wgnet", 0)):
        out.append(_check("Section 4.2", c["text"], "79%" if "79%" in c["text"] else "36%, 41%",
                          c["computed"], "Table 2; our counts", c["agrees"]))
    rel = gap / hf["AP"]
    out.append(_check("Section 4.2", "the accuracy is 4% lower compared to HRFormer-S", "4%",
                      f"relative {_pct(rel)}; absolute {float(gap):.1f} points (Table 2)", "Table 2",
                      percent_agrees(4, rel),
                      "holds as a relative drop; the abstract calls the same gap 3.5% (absolute points)"))
    out.append(_check("Section 4.2", "our model inference time of 24.1ms", "24.1", "24.0 (Table 2, Ours)",
                      "Table 2", False, "the prose and the table give different times for the same model"))
    out.append(_check("Section 4.2", "... nearly two times shorter than the 74.1ms of HRFormer-S", "74.1",
                      "70.1 (Table 2, HRFormer-S)", "Table 2", False,
                      "the prose and the table give different times for HRFormer-S"))
    out.append(_check("Section 4.2", "nearly two times shorter", "~2x", f"74.1/24.1 = {74.1 / 24.1:.2f}x",
                      "section 4.2", False, "three times, not nearly two"))
    out.append(_check("Section 5", "a real-time effect of 24ms", "24", "24.0 (Table 2, Ours)", "Table 2", True))

    # --- Table 2: Ours against our counts, peers against their sources ------------------
    if "wgnet" in params:
        p = params["wgnet"]
        out.append(_check("Table 2, Ours, #Params (M)", "Ours: 5.8", "5.8", f"{p:,} = {p / 1e6:.3f} M (wgnet, counted)",
                          "refpose (DESIGN section 1)", printed_agrees("5.8", Fraction(p, 10**6)),
                          "our widths are a reading of the paper (it gives none), chosen to match Table 4 within "
                          "1.5%; 5.719 M prints as 5.7"))
    if "wgnet" in macs:
        m = macs["wgnet"]
        out.append(_check("Table 2, Ours, GFLOPs", "Ours: 3.6", "3.6", f"{m:,} MACs = {m / 1e9:.3f} G (wgnet, counted)",
                          "refpose count_ops()", printed_agrees("3.6", Fraction(m, 10**9))))
    out.append(_check("Table 2, Time (ms) column", "36.8, 28.7, 30.5, 70.1, 24.0",
                      ", ".join(r["time"] for r in TABLE2_ROWS.values()), "-", "-", None,
                      "cannot be checked: timed on the paper's i7-8700 CPU; no peer publication gives a CPU "
                      "time in that setting"))
    out += _peer_checks("2", TABLE2_ROWS, PEER_COCO, PEER_NOT_FOUND, TABLE2_COLUMNS, T2_TITLES)
    for row, peer in PEER_COCO.items():
        match = row_matches(TABLE2_ROWS[row], peer)
        if peer["named"] in match or not match:
            continue                     # the column checks above say it all
        out.append(_check(f"Table 2, {row} (whole row)", f"{row} at 256x192 (the input the table compares at)",
                          ", ".join(TABLE2_ROWS[row][c] for c in TABLE2_COLUMNS if c != "time"),
                          "matches: " + (", ".join(match) if match else "no configuration of the source"),
                          peer["source"], peer["named"] in match,
                          "" if peer["named"] in match else
                          f"the row is not {peer['named']}" + (f"; in every column the source gives, it is "
                                                             f"{', '.join(match)}" if match else "")))

    # --- Table 3 -----------------------------------------------------------------------
    est = {row: mpii_mean_estimate(cols) for row, cols in TABLE3_ROWS.items()}
    out.append(_check("Table 3, Mean column", "Mean of each row", ", ".join(c["Mean"] for c in TABLE3_ROWS.values()),
                      "equal-count estimates (Head + 2 x the six pair columns)/13: "
                      + ", ".join(f"{row} {float(v):.2f}" for row, v in est.items()), "the rows themselves", None,
                      "cannot be checked exactly: MPII's Mean is over the 14 joints other than pelvis and thorax "
                      "(upper neck included, though no column shows it), each weighted by its visible count in "
                      "the validation set, which the paper does not print; each pair column is the plain average "
                      "of left and right. The estimates are no check: the source's own rows differ from their "
                      "Means by as much (pose_resnet_50: 87.34 vs 88.5)"))
    out += _peer_checks("3", TABLE3_ROWS, PEER_MPII, PEER_MPII_NOT_FOUND, TABLE3_COLUMNS, T3_TITLES)
    if MPII_CONFIG in params:
        p = params[MPII_CONFIG]
        out.append(_check("Table 3, Ours, #Params (M)", "Ours: 5.8", "5.8",
                          f"{p:,} = {p / 1e6:.3f} M ({MPII_CONFIG}, 16-joint head, counted)", "refpose",
                          printed_agrees("5.8", Fraction(p, 10**6)),
                          "the 16-joint model is the COCO one with a 16-channel head; 5.719 M prints as 5.7 "
                          "(the table's unit 'MB' means millions of parameters)"))
    else:
        out.append(_check("Table 3, Ours, #Params (M)", "Ours: 5.8", "5.8", "-", "-", None,
                          f"cannot be checked: no {MPII_CONFIG} config"))
    out.append(_check("Table 3, Ours, PCKh columns", "Ours: 96.8 ... 89.2", "96.8 ... 89.2", "-", "-", None,
                      "cannot be checked without trained weights; `refpose eval --metric pckh` scores them"))

    # --- Table 4 -----------------------------------------------------------------------
    for row, (win, glob, p_txt, _) in TABLE4.items():
        name = TABLE4_CONFIGS[row]
        if name not in params:
            continue
        p = params[name]
        out.append(_check(f"Table 4, {row}, #Params (M)", f"{row} (window {'on' if win else 'off'}, global "
                          f"{'on' if glob else 'off'}): {p_txt}", p_txt, f"{p:,} = {p / 1e6:.3f} M ({name}, counted)",
                          "refpose", printed_agrees(p_txt, Fraction(p, 10**6)),
                          "" if printed_agrees(p_txt, Fraction(p, 10**6)) else
                          "our widths are a reading of the paper (it gives none)"))
    drop = _F(TABLE4["Baseline"][3]) - _F(TABLE4["Model-C"][3])
    out.append(_check("Section 4.2 (on Table 4)", "when the self-attentive block is completely removed, the accuracy "
                      "decreases by 3.9% compared to baseline", "3.9%",
                      f"72.1 - 68.2 = {float(drop):.1f} points; relative {_pct(drop / _F(TABLE4['Baseline'][3]))}",
                      "Table 4", drop == Fraction("3.9"), "absolute AP points"))
    out.append(_check("Table 4, mAP column", "70.4, 69.8, 68.2", "70.4, 69.8, 68.2", "-", "-", None,
                      "cannot be checked without training the variants"))
    return out


def table1_checks(C: int = REDUCTION_C) -> list[dict]:
    """Section 3.2 as checks: every Table 1 cell that does not agree with Eq. (1)/(2), and the prose claims."""
    out = []
    rows = table1(C)
    cells = [(r, col) for r in rows for col in COLUMNS if r[col]["paper"] is not None]
    for r, col in cells:
        cell = r[col]
        if cell["agrees"] is not True:
            out.append(_check(f"Table 1, alpha {r['alpha']}, {COLUMN_TITLES[col]}", cell["paper"], cell["paper"],
                              cell["computed"]["text"], "Eq. (1), Eq. (2)", cell["agrees"], cell.get("note", "")))
    for c in claims(C):
        out.append(_check("Section 3.2", c["text"], "", c["computed"], "Eq. (1), Eq. (2)", c["agrees"]))
    return out
