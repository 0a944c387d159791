"""`analysis.flops --paper`: the verdicts' arithmetic, worked by hand in the comments.

The figures of the peers' sources are read off the cited README tables (they are data in
analysis/paper.py); what is tested here is what the checks conclude from them. All
comparisons are exact (fractions or equal strings), so no tolerance is needed.
"""
import json
from fractions import Fraction

import pytest

from analysis import paper, paper_report
from analysis.flops import main

# DESIGN.md section 1: params of the four configs, MACs of wgnet; wgnet-mpii = wgnet with a
# 16-channel head: 5,719,154 - (96*17 + 17) + (96*16 + 16) = 5,719,154 - 97 = 5,719,057
COUNTS = {"params": {"wgnet": 5_719_154, "wgnet-a": 4_850_930, "wgnet-b": 4_059_890, "wgnet-c": 3_191_666,
                     "wgnet-mpii": 5_719_057},
          "macs": {"wgnet": 3_590_865_920}}


def by_where(checks):
    out = {}
    for c in checks:
        out.setdefault(c["where"], []).append(c)
    return out


@pytest.fixture(scope="module")
def checks():
    return by_where(paper.paper_checks(COUNTS))


def one(checks, where, claim_part=""):
    found = [c for c in checks[where] if claim_part in c["claim"]]
    assert len(found) == 1, (where, claim_part, found)
    return found[0]


def test_printed_precision_accepts_cut_or_rounded():
    assert paper.printed_agrees("4.9", Fraction(4_850_930, 10**6))      # 4.85 rounds to 4.9
    assert paper.printed_agrees("4.0", Fraction(4_059_890, 10**6))      # 4.06 cuts to 4.0
    assert not paper.printed_agrees("5.8", Fraction(5_719_154, 10**6))  # 5.72: 5.7 either way
    assert paper.printed_agrees("3.6", Fraction(3_590_865_920, 10**9))  # 3.59 rounds to 3.6


def test_percent_claims():
    assert paper.percent_agrees(25, 1 - Fraction("5.8") / Fraction("7.8"))   # 2/7.8 = 25.64%
    assert paper.percent_agrees(41, 1 - Fraction("3.6") / Fraction("6.2"))   # 2.6/6.2 = 41.94%
    assert not paper.percent_agrees(40, 1 - Fraction("3.6") / Fraction("6.2"))
    assert paper.percent_agrees(4, Fraction("3.5") / Fraction("75.6"))      # 4.63%


def test_abstract(checks):
    got = [c["agrees"] for c in checks["Abstract"]]
    # 25% (25.6) yes, 41% (41.9) yes, "nearly two times" (70.1/24.0 = 2.92) no, 3.5 points yes
    assert got == [True, True, False, True]


def test_section_42_times(checks):
    assert one(checks, "Section 4.2", "24.1ms")["agrees"] is False            # Table 2 says 24.0
    assert one(checks, "Section 4.2", "74.1ms")["agrees"] is False            # Table 2 says 70.1
    assert one(checks, "Section 4.2", "4% lower")["agrees"] is True           # 3.5/75.6 = 4.6% relative
    assert one(checks, "Section 5")["agrees"] is True                         # 24 ms vs 24.0


def test_table2_hrnet_against_its_readme(checks):
    verdicts = {w.split(", ")[2]: c[0]["agrees"] for w, c in checks.items() if w.startswith("Table 2, HRNet-W32,")}
    # README row pose_hrnet_w32 256x192: 28.5M, 7.1, .744 .905 .819 .708 .810; the paper prints AP^L 81.1
    assert verdicts == {"#Params (M)": True, "GFLOPs": True, "AP": True, "AP50": True, "AP75": True,
                        "AP^M": True, "AP^L": False}


def test_table2_hrformer_row_is_hrformer_b(checks):
    for col in ("AP", "AP50", "AP75", "AP^M", "AP^L"):
        assert checks[f"Table 2, HRFormer-S, {col}"][0]["agrees"] is False
    assert checks["Table 2, HRFormer-S, #Params (M)"][0]["agrees"] is None    # README gives no sizes
    row = checks["Table 2, HRFormer-S (whole row)"][0]
    assert row["agrees"] is False and row["ours"] == "matches: HRFormer-B 256x192"


def test_row_matching_is_exact():
    peer = paper.PEER_COCO["HRFormer-S"]
    assert paper.row_matches(dict(AP="75.6", AP50="90.3"), peer) == ["HRFormer-S 384x288"]
    assert paper.row_matches(dict(AP="75.6"), peer) == ["HRFormer-S 384x288", "HRFormer-B 256x192"]
    assert paper.row_matches(dict(AP="75.7"), peer) == []


def test_tokenpose_rows_cannot_be_checked(checks):
    for table, row in (("2", "TokenPose-S"), ("2", "TokenPose-B"), ("3", "TokenPose-B")):
        c = checks[f"Table {table}, {row} (every column)"][0]
        assert c["agrees"] is None and "source not found" in c["why"]


def test_table3_peers(checks):
    def verdicts(row):
        return {w.split(", ")[2]: c[0]["agrees"] for w, c in checks.items() if w.startswith(f"Table 3, {row},")}
    # pose_resnet_50 on MPII val: 96.4 95.3 89.0 83.2 88.4 84.0 79.6 88.5 -- the paper prints Wrist 88.4
    sb50 = verdicts("SimpleBaseline-50")
    assert sb50.pop("Wrist") is False and all(sb50.values()) and len(sb50) == 8
    assert all(verdicts("SimpleBaseline-101").values())                       # identical row
    hr = verdicts("HRNet-W32")                                                # 97.1 95.9 90.3 86.4 89.1 87.1 83.3 90.3
    assert hr.pop("#Params (M)") is True and not any(hr.values()) and len(hr) == 8


def test_mpii_mean_estimate_by_hand():
    # pose_resnet_50: (96.4 + 2*(95.3+89.0+83.2+88.4+84.0+79.6)) / 13 = (96.4 + 1039.0) / 13 = 1135.4/13
    row = paper.PEER_MPII["SimpleBaseline-50"]["configs"]["pose_resnet_50"]
    assert paper.mpii_mean_estimate(row) == Fraction("1135.4") / 13


def test_our_sizes(checks):
    assert checks["Table 2, Ours, #Params (M)"][0]["agrees"] is False         # 5.719 M is 5.7, not 5.8
    assert checks["Table 2, Ours, GFLOPs"][0]["agrees"] is True
    assert checks["Table 3, Ours, #Params (M)"][0]["agrees"] is False         # 5.719 M again
    t4 = [checks[f"Table 4, {r}, #Params (M)"][0]["agrees"] for r in ("Baseline", "Model-A", "Model-B", "Model-C")]
    assert t4 == [False, True, True, True]                                    # 5.72, 4.85, 4.06, 3.19
    assert one(checks, "Section 4.2 (on Table 4)")["agrees"] is True          # 72.1 - 68.2 = 3.9


def test_a_changed_peer_figure_flips_its_verdict():
    printed = {"HRNet-W32": dict(paper.TABLE2_ROWS["HRNet-W32"], APL="81.0")}
    got = by_where(paper._peer_checks("2", printed, paper.PEER_COCO, paper.PEER_NOT_FOUND,
                                      paper.TABLE2_COLUMNS, paper.T2_TITLES))
    assert got["Table 2, HRNet-W32, AP^L"][0]["agrees"] is True


def test_report_without_the_mpii_config_says_so():
    counts = {"params": {k: v for k, v in COUNTS["params"].items() if k != "wgnet-mpii"}, "macs": COUNTS["macs"]}
    c = by_where(paper.paper_checks(counts))["Table 3, Ours, #Params (M)"][0]
    assert c["agrees"] is None and "no wgnet-mpii config" in c["why"]


def test_report_counts_verdicts():
    r = paper_report(COUNTS)
    s = r["summary"]
    assert s["agrees"] + s["disagrees"] + s["cannot_be_checked"] == len(r["checks"])
    assert s["disagrees"] == sum(c["agrees"] is False for c in r["checks"]) > 0


@pytest.mark.slow
def test_cli_paper_json(capsys):
    assert main(["--paper", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["counts"]["params"]["wgnet"] == 5_719_154 and d["counts"]["macs"]["wgnet"] == 3_590_865_920
    for c in d["checks"]:
        assert {"where", "claim", "paper", "ours", "source", "agrees", "why"} <= set(c)


def test_cli_paper_does_not_combine_with_model(capsys):
    assert main(["--paper", "--model", "wgnet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--paper" in err
