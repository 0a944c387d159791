"""The FLOP analyzer: the paper's complexity formulas beside operations counted from refpose's layers.

    python -m analysis.flops --alpha 4 --C 32          # Eq. (1), Eq. (2), counted terms, Table 1
    python -m analysis.flops --model wgnet             # the whole network, beside Tables 2 and 4
    python -m analysis.flops --paper                   # every checkable number of the paper, with verdicts

Three parts kept apart (STYLE.md): `formulas` (pure functions of shapes), `counted`
(what the real layers report to `refpose.count_ops()` while they run), `paper` (what
the paper prints, as data, and the verdicts on it). The report builders below put them side by side;
`analysis.flops` only parses arguments and prints. One FLOP is one multiply-accumulate.
"""
from __future__ import annotations

from refpose.config import get_config, variant_of
from refpose.errors import ConfigError

from . import counted, formulas, paper
from .formulas import Cost

FLOP_NOTE = "1 FLOP = 1 multiply-accumulate, as in the paper"

__all__ = ["FLOP_NOTE", "attention_report", "network_report", "paper_report", "count_sizes", "counted", "formulas", "paper", "Cost"]


def check_request(alphas, C: int, h: int, w: int, patch: tuple[int, int]) -> None:
    """Raise ConfigError naming the first problem with a request (bad C, alpha, window or patch)."""
    if C <= 0:
        raise ConfigError(f"--C must be a positive number of channels, got {C}")
    if h <= 0 or w <= 0:
        raise ConfigError(f"the map must have positive sides, got {h}x{w}")
    if not alphas:
        raise ConfigError("give at least one --alpha")
    for alpha in alphas:
        if alpha <= 0:
            raise ConfigError(f"--alpha must be a positive integer, got {alpha}")
        try:
            formulas.check_shapes(h, w, C, formulas.alpha_window(alpha), patch)
        except ConfigError as e:
            raise ConfigError(f"--alpha {alpha}: {e}") from None


def _pair(alpha: int, C: int, h: int, w: int, patch: tuple[int, int], impl: str) -> dict:
    """Eq. (2), its terms, and the counted window + global pair for one alpha."""
    window = formulas.alpha_window(alpha)
    hp, wp = window
    ph, pw = patch
    got = counted.count_attention(h, w, C, window, patch, impl=impl)
    expect = {kind: formulas.attention_terms(h, w, C, kind, window, patch) for kind in counted.KINDS}
    eq2 = formulas.eq2(h, w, C, window, patch)
    total = got["total"]
    proj_formula = 2 * formulas.projection(h, w).at(C)
    return {
        "alpha": alpha, "window": [hp, wp],
        "eq2": eq2,
        "eq2_terms": {"6hwC^2": 6 * h * w * C * C, "2hh'ww'C": 2 * h * hp * w * wp * C,
                      f"{2 * ph * pw}h^2w^2C/(h'w')": 2 * ph * pw * (h * w) ** 2 * C // (hp * wp)},
        "counted": {**{t: total[t] for t in counted.TERMS},
                    "by_kind": {kind: got[kind] for kind in counted.KINDS},
                    "qkv+qk+av": total["qkv"] + total["qk"] + total["av"],
                    "equals_eq2": total["qkv"] + total["qk"] + total["av"] == eq2,
                    "proj_formula": proj_formula,
                    "equals_proj_formula": total["proj"] == proj_formula},
        "formula_by_kind": expect,
    }


def attention_report(alphas, C: int = 32, h: int = formulas.PAPER_MAP[0], w: int = formulas.PAPER_MAP[1],
                     patch: tuple[int, int] = formulas.PAPER_PATCH, impl: str = "reference") -> dict:
    """Eq. (1), Eq. (2) and the counted window + global pair for each alpha, Table 1, the claims.

    With one alpha, `eq2` is an integer and `counted` one object; with several, both are
    lists in the order of `alpha`.
    """
    alphas = list(alphas)
    patch = tuple(patch)
    check_request(alphas, C, h, w, patch)
    pairs = [_pair(a, C, h, w, patch, impl) for a in alphas]
    full = counted.count_attention(h, w, C, (h, w), patch, kinds=("window",), impl=impl)["total"]
    eq1 = formulas.eq1(h, w, C)
    one = len(pairs) == 1
    return {
        "note": FLOP_NOTE,
        "h": h, "w": w, "C": C, "patch": list(patch), "alpha": alphas, "impl": impl,
        "eq1": eq1,
        "eq1_terms": {"3hwC^2": 3 * h * w * C * C, "2h^2w^2C": 2 * (h * w) ** 2 * C},
        "eq2": pairs[0]["eq2"] if one else [p["eq2"] for p in pairs],
        "counted": pairs[0]["counted"] if one else [p["counted"] for p in pairs],
        "pairs": pairs,
        "counted_mhsa": {**full, "qkv+qk+av": full["qkv"] + full["qk"] + full["av"],
                         "equals_eq1": full["qkv"] + full["qk"] + full["av"] == eq1},
        "table1": paper.table1(C, h, w, patch),
        "table1_compared": (h, w) == paper.TABLE1_MAP and patch == paper.TABLE1_PATCH,
        "rounding": paper.rounding_rule(),
        "claims": paper.claims(C),
    }


def network_report(config, input_size: tuple[int, int] | None = None) -> dict:
    """Params and MACs of a named config per stage and op kind (counted), beside Tables 2 and 4.

    Also checks every stage's counted attention against the formulas: per WNet block,
    window attention is Eq. (2)'s window half (Eq. (1) when the window is the whole map)
    and global attention its global half, with the output projection as its own term.
    """
    from refpose.summary import model_summary

    cfg = get_config(config)
    summary = model_summary(cfg, input_size)
    net = counted.count_network(cfg, tuple(summary["input"]))
    if net["macs"] != summary["macs"]:
        raise RuntimeError("two forwards of the same config counted different MACs")
    attention = []
    for st in net["stages"]:
        (h, w), C, n = st["map"], st["channels"], st["blocks"]
        for kind, got in st["counted"].items():
            expect = formulas.attention_terms(h, w, C, kind, tuple(st["window"]), tuple(st["patch"]))
            attention.append(dict(stage=st["stage"], kind=kind, map=[h, w], channels=C, blocks=n,
                                  window=list(st["window"]), patch=list(st["patch"]) if kind == "global" else None,
                                  heads=st["heads"], counted=got,
                                  formula={t: n * v for t, v in expect.items()},
                                  equal=all(got[t] == n * expect[t] for t in counted.TERMS)))
    paper_params, paper_gflops = variant_of(cfg.name).paper_params_m, variant_of(cfg.name).paper_gflops
    return {
        "note": FLOP_NOTE,
        **summary,
        "attention": attention,
        "paper": {"params_M": paper_params, "gflops": paper_gflops,
                  "params_diff": None if paper_params is None else summary["params"] - round(paper_params * 1e6),
                  "gflops_diff": None if paper_gflops is None else summary["macs"] / 1e9 - paper_gflops},
        "claims": paper.network_claims(summary["params"], summary["macs"]) if cfg.name == "wgnet" else [],
    }


def count_sizes(params_of=("wgnet", "wgnet-a", "wgnet-b", "wgnet-c", paper.MPII_CONFIG),
                macs_of=("wgnet",)) -> dict:
    """Trainable parameters (from the built models) and MACs (counted by one forward) of named configs.

    A name that is not a known config is left out (the checks that need it say so).
    """
    from refpose.config import CONFIGS
    from refpose.weights import build

    params = {name: build(name, impl="reference").num_params for name in params_of if name in CONFIGS}
    macs = {name: counted.count_network(name)["macs"] for name in macs_of if name in CONFIGS}
    return {"params": params, "macs": macs}


def paper_report(counts: dict | None = None) -> dict:
    """Every checkable number of the paper with a verdict: section 3.2 (Table 1 and its prose)
    and everything else (`paper.paper_checks`), with a count of the verdicts."""
    counts = count_sizes() if counts is None else counts
    checks = paper.table1_checks() + paper.paper_checks(counts)
    summary = {"agrees": sum(c["agrees"] is True for c in checks),
               "disagrees": sum(c["agrees"] is False for c in checks),
               "cannot_be_checked": sum(c["agrees"] is None for c in checks)}
    return {"note": FLOP_NOTE, "counts": counts, "checks": checks, "summary": summary}
