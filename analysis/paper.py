"""What the paper prints about complexity, as data, and how to read it against the formulas.

Transcribed from the paper (section 3.2 Table 1 and the paragraph after it; section 4.2
Table 2 and its prose). Printed text is kept verbatim, including the `$...$` math markup
of the text version; `read_cell` strips it.

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
TABLE1_UNITS = "(attention: $M=1e^3C^2$, $N=1e^5C$)"
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

CLAIMS_TEXT = (
    "When α is 1, the window size is (4, 3), which is greater than the calculation amount of MHSA. "
    "When α is 2, 4, and 8, the calculation amount is smaller than the latter. When α is 16, the "
    "method degenerates into MHSA. When α is 4, the amount of calculation is the smallest, and assume "
    "the value of feature dimension C is 32, which can reduce the amount of calculation by 74% "
    "compared with the ordinary attention mechanism."
)
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
    window = F.window_of(alpha)
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
        window = F.window_of(alpha)
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
    wnet = {a: F.wnet_attention(h, w, F.window_of(a), patch) for a in F.PAPER_ALPHAS}
    out = []

    # alpha = 1 costs more than MHSA: both coefficients at least as large, one larger
    w1 = wnet[1]
    out.append({"text": CLAIM_GREATER,
                "computed": f"Eq. (2) = {fmt_units(w1)} vs Eq. (1) = {fmt_units(full)}: larger for every C > 0",
                "agrees": w1.c2 >= full.c2 and w1.c1 >= full.c1 and w1 != full})

    # alpha = 2, 4, 8 cost less than MHSA: true only below a C threshold
    limits = {a: F.below_mhsa_until(h, w, F.window_of(a), patch) for a in (2, 4, 8)}
    at_C = {a: Fraction(wnet[a].at(C), full.at(C)) for a in (2, 4, 8)}
    out.append({"text": CLAIM_SMALLER,
                "computed": "; ".join(f"alpha={a}: {_pct(at_C[a])} of Eq. (1) at C={C}, smaller while "
                                      f"C < {float(limits[a]):g}" for a in (2, 4, 8)),
                "agrees": all(wnet[a].at(C) < full.at(C) for a in (2, 4, 8))})

    # alpha = 16: the one window is the whole map, so window attention is Eq. (1)
    win16 = F.window_attention(h, w, F.window_of(16))
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
    window = F.window_of(4)
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
