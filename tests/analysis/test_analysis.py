"""The FLOP analyzer: formulas against hand-worked values, counted ops against formulas, the paper's table.

Expected numbers are worked by hand in the comments (or come from DESIGN.md's table);
none is taken from the code under test. All comparisons are exact integers or exact
fractions, so no tolerance is needed.
"""
import json
from fractions import Fraction

import pytest

from analysis import counted, formulas as F, network_report, paper
from analysis.flops import main
from refpose.errors import ConfigError


# --- formulas ------------------------------------------------------------------------------
# (h, w, C, window, patch, Eq. (1), Eq. (2)), each worked by hand:
HAND = [
    # hw = 3072. Eq1: 3*3072*32^2 = 9,437,184; 2*3072^2*32 = 603,979,776 -> 613,416,960.
    # Eq2: 6*3072*1024 = 18,874,368; 2*64*16*48*12*32 = 2*3072*192*32 = 37,748,736;
    #      24*3072^2*32/192 = 37,748,736 -> 94,371,840.
    (64, 48, 32, (16, 12), (4, 3), 613_416_960, 94_371_840),
    # hw = 48. Eq1: 3*48*16 = 2,304; 2*48^2*4 = 18,432 -> 20,736.
    # Eq2: 6*48*16 = 4,608; 2*8*4*6*3*4 = 4,608; 24*48^2*4/12 = 18,432 -> 27,648.
    (8, 6, 4, (4, 3), (4, 3), 20_736, 27_648),
    # hw = 192. Eq1: 3*192*64 = 36,864; 2*192^2*8 = 589,824 -> 626,688.
    # Eq2 with 2x3 patches (2*ph*pw = 12): 6*192*64 = 73,728; 2*16*8*12*6*8 = 147,456;
    #      12*192^2*8/48 = 73,728 -> 294,912.
    (16, 12, 8, (8, 6), (2, 3), 626_688, 294_912),
    # hw = 768, one window over the whole map, 1x1 patches. Eq1: 3*768*9216 = 21,233,664;
    # 2*768^2*96 = 113,246,208 -> 134,479,872. Eq2: 6*768*9216 = 42,467,328;
    # 2*768*768*96 = 113,246,208; 2*1*768^2*96/768 = 147,456 -> 155,860,992.
    (32, 24, 96, (32, 24), (1, 1), 134_479_872, 155_860_992),
]


@pytest.mark.parametrize("h, w, C, window, patch, eq1, eq2", HAND)
def test_equations_match_hand_worked_values(h, w, C, window, patch, eq1, eq2):
    assert F.eq1(h, w, C) == eq1
    assert F.eq2(h, w, C, window, patch) == eq2


@pytest.mark.parametrize("h, w, C, window, patch, eq1, eq2", HAND)
def test_table1_terms_add_up_to_the_equations(h, w, C, window, patch, eq1, eq2):
    assert F.mhsa(h, w).at(C) == eq1
    assert (F.window_attention(h, w, window) + F.global_attention(h, w, window, patch)).at(C) == eq2
    for kind in ("window", "global"):
        t = F.attention_terms(h, w, C, kind, window, patch)
        assert t["qk"] == t["av"] and t["proj"] == h * w * C * C and t["qkv"] == 3 * h * w * C * C


def test_paper_units():
    # 3hw = 9216 -> 9.216 M; 2(hw)^2 = 18,874,368 -> 188.74368 N (M = 1e3 C^2, N = 1e5 C)
    full = F.mhsa(64, 48)
    assert full.M == Fraction("9.216") and full.N == Fraction("188.74368")


def test_threshold_below_which_wnet_beats_mhsa():
    # alpha 2 (8x6): C < (2*3072 - 2*48 - 24*3072/48) / 3 = (6144 - 96 - 1536) / 3 = 1504
    # alpha 4 (16x12): C < (6144 - 384 - 384) / 3 = 1792
    assert F.below_mhsa_until(64, 48, (8, 6), (4, 3)) == 1504
    assert F.below_mhsa_until(64, 48, (16, 12), (4, 3)) == 1792


@pytest.mark.parametrize("window, patch, words", [
    ((20, 15), (4, 3), "window 20x15 does not divide the 64x48 map"),
    ((16, 12), (5, 3), "patch 5x3 does not divide the 16x12 window"),
    ((0, 3), (4, 3), "window 0x3"),
])
def test_non_dividing_window_or_patch_rejected(window, patch, words):
    with pytest.raises(ConfigError, match=words):
        F.eq2(64, 48, 32, window, patch)
    with pytest.raises(ConfigError, match=words):
        counted.count_attention(64, 48, 8, window, patch)


def test_non_positive_channels_rejected():
    with pytest.raises(ConfigError, match="C must be a positive"):
        F.eq1(64, 48, 0)


# --- counted == formula ---------------------------------------------------------------------
@pytest.mark.parametrize("h, w", [(64, 48), (32, 24)])
@pytest.mark.parametrize("C", [8, 32])
@pytest.mark.parametrize("alpha", [1, 2, 4, 8])
def test_counted_pair_equals_eq2(h, w, C, alpha):
    window = (4 * alpha, 3 * alpha)
    got = counted.count_attention(h, w, C, window, (4, 3))
    t = got["total"]
    assert t["qkv"] + t["qk"] + t["av"] == F.eq2(h, w, C, window, (4, 3))
    assert t["proj"] == 2 * h * w * C * C                     # two output projections, hwC^2 each
    for kind in ("window", "global"):
        assert got[kind] == F.attention_terms(h, w, C, kind, window, (4, 3))


@pytest.mark.parametrize("h, w, C", [(64, 48, 32), (16, 12, 8)])
def test_counted_full_map_attention_equals_eq1(h, w, C):
    t = counted.count_attention(h, w, C, (h, w), (4, 3), kinds=("window",))["total"]
    assert t["qkv"] + t["qk"] + t["av"] == F.eq1(h, w, C)
    assert t["proj"] == h * w * C * C


# --- Table 1 and the claims ---------------------------------------------------------------------
def test_transcription_of_table1():
    # the rows as printed in section 3.2 (spot checks of the data, read off the paper)
    rows = {r["alpha"]: r for r in paper.TABLE1}
    assert [r["alpha"] for r in paper.TABLE1] == [1, 2, 4, 8, 16]
    assert rows[4]["glo"] == "$9.2M + 0.7N$" and rows[4]["mhsa"] == "$9.2M + 18$"
    assert rows[16]["glo"] == "—" and rows[2]["wnet"] == "$18M + 50.1N$"


def test_cut_rule_reads_printed_numbers():
    x = Fraction("11.79648")                    # Flop_win_attn at alpha 4, in N
    assert paper.agrees("11.7", x)              # cut: what the paper prints
    assert not paper.agrees("11.8", x)          # rounded would be flagged under the cut rule
    assert paper.agrees("11.8", x, paper.rounded)
    assert not paper.agrees("0.7", x)
    assert paper.agrees("18", Fraction("18.432"))


def test_table1_flags_exactly_the_cells_that_disagree():
    rows = paper.table1(32)
    verdicts = {(r["alpha"], col): r[col]["agrees"] for r in rows for col in paper.COLUMNS}
    # worked by hand: glo at alpha 4 is 11.796N (printed 0.7N); at alpha 16 the paper drops
    # the global half that Eq. (2) keeps (glo '—', WNet printed as 9.2M + 188.7N vs 18.432M + 189.481N)
    assert {k for k, v in verdicts.items() if v is False} == {(4, "glo"), (16, "glo"), (16, "wnet")}
    # the MHSA column is one merged cell, cut short in the text: nothing to check
    assert {k for k, v in verdicts.items() if v is None} == {(a, "mhsa") for a in (1, 2, 4, 8, 16)}


def test_a_mutated_cell_is_caught():
    cost = F.window_attention(64, 48, (16, 12))             # 9.216M + 11.79648N
    assert paper.compare_cell("$9.2M + 11.7N$", cost, 32)["agrees"] is True
    assert paper.compare_cell("$9.3M + 11.7N$", cost, 32)["agrees"] is False
    assert paper.compare_cell("$9.2M + 11.8N$", cost, 32)["agrees"] is False
    assert paper.compare_cell("—", cost, 32)["agrees"] is False
    assert paper.compare_cell("$9.2M + 11$", cost, 32)["agrees"] is None
    assert paper.compare_cell("$9.2M + 11.7N$", cost, 32)["computed"]["macs"] == 47_185_920  # 9216*1024 + 1,179,648*32


def test_rounding_rule_is_cutting():
    r = paper.rounding_rule()
    # counted by hand from the table: 29 readable numbers; cutting misses the 3 disagreeing
    # ones, rounding also misses 189.4, 47.1 (twice), 11.7 and 23.5
    assert r["rule"] == "cut" and r["numbers"] == 29
    assert r["explained"] == {"cut": 26, "round": 21}


def test_claims_verdicts():
    got = paper.claims(32)
    assert [c["text"] for c in got] == [paper.CLAIM_GREATER, paper.CLAIM_SMALLER, paper.CLAIM_DEGENERATES,
                                        paper.CLAIM_SMALLEST, paper.CLAIM_REDUCTION]
    assert [c["agrees"] for c in got] == [True, True, True, True, False]
    # Eq.(2)/Eq.(1) at alpha 4, C 32 = 94,371,840 / 613,416,960 = 2/13: a reduction of 84.6%, not 74%
    assert "84.6%" in got[4]["computed"]
    # above C = 1504 alpha 2 costs more than MHSA, so the claim fails there
    assert paper.claims(2048)[1]["agrees"] is False


def test_table2_prose_claims():
    # 1 - 5.8/28.5 = 79.6%; 1 - 3.6/5.7 = 36.8%; 1 - 3.6/6.2 = 41.9%: all cut to the printed figures
    assert [c["agrees"] for c in paper.network_claims(5_719_154, 3_590_865_920)] == [True, True]


# --- the whole network ---------------------------------------------------------------------------
def test_network_report_tiny_attention_matches_formulas():
    r = network_report("tiny")
    # every stage of the tiny config has attention; s4's window is clamped to its 4x3 map
    assert {a["stage"] for a in r["attention"]} == {"s1", "s2", "s3", "s4", "d1", "d2", "d3"}
    assert all(a["equal"] for a in r["attention"])
    assert sum(s["macs"] for s in r["stages"]) == r["macs"] == sum(r["macs_by_kind"].values())
    assert r["paper"]["params_M"] is None and r["claims"] == []             # not a paper variant


@pytest.mark.slow
def test_network_report_wgnet_matches_design():
    r = network_report("wgnet")
    assert r["params"] == 5_719_154 and r["macs"] == 3_590_865_920          # DESIGN section 1
    assert r["paper"]["params_M"] == 5.8 and r["paper"]["gflops"] == 3.6     # Tables 2 and 4
    assert r["attention"] and all(a["equal"] for a in r["attention"])
    assert sum(s["macs"] for s in r["stages"]) == r["macs"]


@pytest.mark.slow
@pytest.mark.parametrize("name, macs", [("wgnet-a", 2_438_349_824), ("wgnet-b", 2_503_230_464),
                                        ("wgnet-c", 1_350_714_368)])
def test_counted_variants_match_design(name, macs):
    assert counted.count_network(name)["macs"] == macs                       # DESIGN section 1


# --- command line ---------------------------------------------------------------------------------
def test_cli_json_contract(capsys):
    assert main(["--alpha", "4", "--C", "32", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["eq1"] == 613_416_960 and d["eq2"] == 94_371_840                 # hand-worked above
    assert {k: d["counted"][k] for k in ("qkv", "qk", "av", "proj")} == \
        {"qkv": 18_874_368, "qk": 37_748_736, "av": 37_748_736, "proj": 6_291_456}
    assert [r["alpha"] for r in d["table1"]] == [1, 2, 4, 8, 16]
    for row in d["table1"]:
        for col in ("win", "glo", "wnet", "mhsa"):
            assert {"paper", "computed", "agrees"} <= set(row[col])
    assert d["table1"][2]["glo"]["paper"] == "9.2M + 0.7N" and d["table1"][2]["glo"]["agrees"] is False
    assert all({"text", "computed", "agrees"} <= set(c) for c in d["claims"]) and len(d["claims"]) == 5


def test_cli_text_output(capsys):
    assert main(["--alpha", "4", "--C", "32"]) == 0
    out = capsys.readouterr().out
    assert "1 FLOP = 1 multiply-accumulate, as in the paper" in out
    assert "613,416,960" in out and "94,371,840" in out and "DISAGREES" in out


@pytest.mark.parametrize("argv, words", [
    (["--alpha", "5"], "window 20x15 does not divide the 64x48 map"),
    (["--C", "0"], "--C must be a positive"),
    (["--patch", "5x3"], "patch 5x3 does not divide the 16x12 window"),
    (["--patch", "four"], "--patch must look like 4x3"),
    (["--model", "nope"], "unknown config"),
])
def test_cli_bad_input_is_one_line_and_status_2(capsys, argv, words):
    assert main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err.count("\n") == 1 and words in cap.err


def test_cli_model_text_output(capsys):
    assert main(["--model", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "1 FLOP = 1 multiply-accumulate, as in the paper" in out and "op kind" in out


def test_cli_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the plot extra)")
    out = tmp_path / "table1.png"
    assert main(["--alpha", "4", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table1.png"]      # no temp file left behind
