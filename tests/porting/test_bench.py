"""`refpose bench` (refpose/bench.py, refpose/cli/bench.py): arguments, timing protocol, results.

Timings themselves are machine-dependent and not asserted; what is tested is the protocol
(warm-up, balanced orders of the candidates, same input for all), the bookkeeping (ratios, MACs, the
agreement check, skipped candidates) and the command's handling of bad input.
"""
import json
import os
from collections import Counter

import numba
import numpy as np
import pytest

from refpose.porting import bench
from refpose.cli import main
from refpose.errors import BenchError
from refpose.summary import model_summary

pytestmark = pytest.mark.usefixtures("warm_kernels")


# --- arguments -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, flag", [({"threads": 0}, "--threads"), ({"runs": 0}, "--runs"),
                                          ({"batch": 0}, "--batch"), ({"threads": -1}, "--threads")])
def test_bad_arguments_are_bench_errors(kwargs, flag):
    args = {"batch": 1, "threads": 1, "runs": 1, **kwargs}
    with pytest.raises(BenchError, match=flag):
        bench.check_args(**args)


def test_more_threads_than_numba_has_is_an_error():
    with pytest.raises(BenchError, match="NUMBA_NUM_THREADS"):
        bench.check_args(1, numba.config.NUMBA_NUM_THREADS + 1, 1)


def test_cli_bad_input_is_one_line_and_status_2(capsys):
    assert main(["bench", "--config", "nope", "--threads", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "unknown config 'nope'" in err, err


@pytest.mark.parametrize("argv, words", [(["--threads", "0"], "argument --threads: expected a whole number >= 1"),
                                         (["--runs", "0"], "argument --runs: expected a whole number >= 1"),
                                         (["--batch", "1000000"], "argument --batch: expected a whole number between 1 and 64"),
                                         (["--seed", "-1"], "argument --seed: expected a seed between 0 and 4,294,967,295")])
def test_cli_bad_numbers_are_usage_errors(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    assert err.count("\n") == 1 and words in err, err


# --- protocol --------------------------------------------------------------------------------------
def test_rounds_run_each_candidate_once_after_an_untimed_warm_up():
    calls = []
    cands = [bench.Candidate(name, lambda name=name: calls.append(name)) for name in "abc"]
    bench.time_rounds(cands, runs=4, warmup=2)
    assert calls[:6] == list("aabbcc")                  # warm-up: each candidate twice, in list order
    rounds = [calls[6 + 3 * r:9 + 3 * r] for r in range(4)]
    assert all(sorted(r) == list("abc") for r in rounds)
    assert len({"".join(r) for r in rounds}) > 1        # the order changes between rounds
    assert [len(c.times) for c in cands] == [4, 4, 4]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7])
def test_every_candidate_follows_every_other_equally_often(n):
    # A call may leave a cost to the next one (a cache, a sleeping pool): over the design's
    # orders, each ordered pair (x right before y) occurs the same number of times.
    orders = bench.balanced_orders(n)
    assert all(sorted(o) == list(range(n)) for o in orders)
    pairs = Counter((o[i], o[i + 1]) for o in orders for i in range(n - 1))
    if n > 1:
        assert len(pairs) == n * (n - 1) and len(set(pairs.values())) == 1, pairs


def test_rel_diff_by_hand():
    ref = np.array([[2.0, -4.0], [1.0, 0.0]])
    out = np.array([[2.0, -4.0], [1.5, 0.0]], np.float32)
    assert bench.rel_diff(out, ref) == 0.5 / 4


def test_ratio_interval_of_steady_and_noisy_timings():
    # Constant timings have no spread: the interval is the ratio itself (2 / 1).
    assert bench.ratio_interval([2.0] * 20, [1.0] * 20) == (2.0, 2.0)
    # Half the rounds slow for both candidates alike (a busy stretch of the machine), one
    # candidate 1.5x the other in every round: resampled by round, every resample's ratio of
    # medians is exactly 1.5 (a median scales with its data), so the interval is [1.5, 1.5].
    den = [1.0] * 10 + [3.0] * 10
    assert bench.ratio_interval([1.5 * d for d in den], den) == pytest.approx((1.5, 1.5))
    # Independent noise of +-10 % on one candidate: the interval holds the true ratio 1 and is
    # wider with 10 rounds than with 200.
    rng = np.random.default_rng(1)
    narrow = bench.ratio_interval(list(1 + 0.1 * rng.uniform(-1, 1, 200)), [1.0] * 200)
    wide = bench.ratio_interval(list(1 + 0.1 * rng.uniform(-1, 1, 10)), [1.0] * 10)
    assert narrow[0] <= 1 <= narrow[1] and wide[0] <= 1 <= wide[1]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_fixed_threads_sets_and_restores_numba_threads():
    before = numba.get_num_threads()
    with bench.fixed_threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before


@pytest.fixture(scope="module")
def tiny_result():
    return bench.run_bench("tiny", batch=2, threads=1, runs=3, optional=False)


def test_run_bench_times_both_refpose_paths(tiny_result):
    r = tiny_result
    names = [c["name"] for c in r["candidates"]]
    assert names == [bench.FAST, bench.NUMPY]
    fast, numpy_path = r["candidates"]
    assert fast["ratio"] == 1.0                                  # the fast path is the unit
    assert numpy_path["ratio"] == pytest.approx(numpy_path["median_ms"] / fast["median_ms"])
    for c in r["candidates"]:
        assert 0 < c["min_ms"] <= c["median_ms"]
        assert c["agrees"] and c["max_rel_diff"] <= 1e-4      # float32 paths vs the float64 reference
    assert r["sgemm"]["gmacs_per_s"] > 0 and r["sgemm"]["gflops"] == pytest.approx(2 * r["sgemm"]["gmacs_per_s"])
    assert r["input"] == [2, 3, 128, 96] and r["threads"] == 1


def test_run_bench_counts_the_macs_of_the_batch(tiny_result):
    # the per-image count of the analyzer's summary (NumPy path), times the batch of 2
    assert tiny_result["macs"] == 2 * model_summary("tiny")["macs"]
    fast = tiny_result["candidates"][0]
    assert fast["gmacs_per_s"] == pytest.approx(tiny_result["macs"] / fast["median_ms"] / 1e6)


def test_run_bench_reports_the_blas_in_use(tiny_result):
    pytest.importorskip("threadpoolctl", reason="the BLAS report comes from threadpoolctl")
    assert tiny_result["blas"], "no BLAS library reported"
    assert all(b["internal_api"] and "num_threads" in b for b in tiny_result["blas"])


def test_run_bench_reports_the_fast_paths_vector_width(tiny_result):
    # the figures of the fast path depend on it: 512-bit tiles of 8 rows with AVX-512, else 256-bit of 4
    from llvmlite import binding

    if os.environ.get("NUMBA_CPU_FEATURES"):
        pytest.skip("the kernels are compiled for NUMBA_CPU_FEATURES, not for this CPU")
    avx512 = "+avx512f" in binding.get_host_cpu_features().flatten().split(",")
    want = {"vector_bits": 512, "tile_rows": 8} if avx512 else {"vector_bits": 256, "tile_rows": 4}
    assert tiny_result["fast_path"] == want
    assert f"tiles of {want['tile_rows']} rows x 3 vectors of {want['vector_bits']} bits" in bench.format_result(tiny_result)


def test_table_has_the_columns_of_the_issue(tiny_result):
    text = bench.format_result(tiny_result)
    for words in ("median ms", "min ms", "x fast", "95 % interval", "GMAC/s", "sgemm", "BLAS:", "first run of refpose fast",
                  bench.FAST, bench.NUMPY, "1 FLOP = 1 MAC"):
        assert words in text, words


def test_aa_mode_times_the_fast_path_against_a_copy():
    r = bench.run_bench("tiny", threads=1, runs=3, aa=True)
    assert [c["name"] for c in r["candidates"]] == [bench.FAST, bench.FAST_COPY]
    assert r["aa_ratio"] == pytest.approx(r["candidates"][1]["median_ms"] / r["candidates"][0]["median_ms"])
    assert r["aa_fair"] == (abs(r["aa_ratio"] - 1) <= 0.05)
    lo, hi = r["aa_interval"]
    assert lo <= r["aa_ratio"] <= hi
    assert "A/A" in bench.format_result(r)


def test_missing_frameworks_are_skipped_with_a_note(monkeypatch):
    # an entry None in sys.modules makes `import torch` raise ImportError, as if not installed
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)
    cands, notes, onnx_path = bench.optional_candidates({}, None, None, 1, ".", lambda s: None)
    assert cands == [] and onnx_path is None
    assert len(notes) == 3
    assert "pytorch eager: skipped (torch is not installed" in notes[0]
    assert "onnxruntime: skipped (onnxruntime is not installed" in notes[1]
    assert "openvino: skipped (openvino is not installed; pip install 'refpose[openvino]')" in notes[2]


def test_cli_prints_json_and_notes_skipped_candidates(monkeypatch, capsys):
    monkeypatch.setattr(bench.timing, "optional_candidates", lambda *a: ([], ["onnxruntime: skipped (test)"], None))
    assert main(["bench", "--config", "tiny", "--threads", "1", "--runs", "2", "--json"]) == 0
    out, _ = capsys.readouterr()
    r = json.loads(out)
    assert [c["name"] for c in r["candidates"]] == [bench.FAST, bench.NUMPY]
    assert r["skipped"] == ["onnxruntime: skipped (test)"]
    assert {"sgemm", "blas", "macs", "fast_first_run_s", "kernel_cache"} <= set(r)


@pytest.mark.slow
def test_frameworks_run_on_the_same_weights_and_agree():
    pytest.importorskip("torch", reason="PyTorch eager is an optional candidate")
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is an optional candidate")
    pytest.importorskip("onnx", reason="the ONNX export needs onnx")
    r = bench.run_bench("tiny", threads=1, runs=2)
    names = [c["name"] for c in r["candidates"]]
    want = [bench.FAST, bench.NUMPY, bench.TORCH, bench.ORT]
    if bench._installed("openvino"):
        want.append(bench.OPENVINO)
    assert names == want
    for c in r["candidates"]:
        assert c["agrees"], (c["name"], c["max_rel_diff"])


def test_run_bench_measures_peak_memory_per_candidate(tiny_result):
    # each candidate ran in a child process of its own; the peak includes the interpreter,
    # NumPy and the weights (tens of MB at least), and the forwards' share is part of it
    for c in tiny_result["candidates"]:
        assert c["peak_rss_mb"] > 20, c
        assert 0 <= c["forward_rss_mb"] <= c["peak_rss_mb"], c
    assert "peak RSS" in bench.format_result(tiny_result)


def test_profile_splits_the_fast_path_by_op_kind_and_stage():
    from refpose.model import TAPS
    r = bench.run_profile("tiny", threads=1, runs=2)
    fast = r["fast"]
    kinds = {row["name"] for row in fast["by_op"]}
    # the fast path's op set: the fused attention blocks, the convs
    assert {"attention_block", "conv", "depthwise_conv", "conv_transpose", "other"} <= kinds
    assert {row["name"] for row in fast["by_stage"]} == set(TAPS) | {"other"}
    for table in (fast["by_op"], fast["by_stage"]):
        # "other" is the total minus the timed parts, so the shares add up to one
        assert sum(row["share"] for row in table) == pytest.approx(1)
        assert sum(row["ms"] for row in table) == pytest.approx(fast["total_ms"])
    by_name = {row["name"]: row for row in fast["by_op"]}
    assert by_name["attention_block"]["calls"] == 13            # tiny: 7 stages, 6 of them with both attentions
    assert by_name["depthwise_conv"]["calls"] == 13             # 2 in the stem + 11 inverted residuals
    text = bench.format_profile(r)
    assert "op kind" in text and "stage" in text
    if r["ort"] is not None:
        assert any(row["name"] == "MatMul" for row in r["ort"]["by_op"])
        assert "op type" in text


# --- the porter's case and the first run --------------------------------------------------------
@pytest.mark.torch
def test_torch_first_times_the_fast_path_in_processes_that_imported_torch_first():
    """`refpose bench --torch-first`: three child processes started alike, the first without torch
    (the unit of the ratios), two with torch imported before refpose; each times its own forward,
    on the kernels' every thread (refpose/threads.py), and agrees with the reference."""
    pytest.importorskip("torch", reason="the porter's case imports torch")
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    r = bench.run_bench("tiny", threads=threads, runs=2, torch_first=True)
    names = [c["name"] for c in r["candidates"]]
    assert names == [bench.NO_TORCH, bench.TORCH_FIRST, bench.TORCH_IDLE]
    assert r["candidates"][0]["ratio"] == 1.0
    assert all(c["agrees"] for c in r["candidates"])
    workers = r["workers"]
    assert [workers[n]["openmp_loaded_first"] for n in names] == [False, True, True]
    assert all(w["kernel_threads"] == threads for w in workers.values()), workers
    text = bench.format_result(r)
    assert "torch first:" in text and "torch's own forward took" in text


def test_cold_start_report_lists_each_kernels_compile_time(monkeypatch):
    """`refpose bench --cold` runs two fresh processes (empty cache, then the cache it filled); the
    table lists each kernel's compile time and share, largest first."""
    from refpose.porting.bench import cold

    calls = []

    def fake_child(config, batch, seed, cache_dir):
        calls.append(cache_dir)
        kernels = [{"kernel": "_matmul_bias_act", "signature": "(Array(float32, 2, 'C', False, aligned=True),)",
                    "compile_s": 3.0}, {"kernel": "_attention_block", "signature": "(int64,)", "compile_s": 1.0}]
        return {"helper": {"helper": True, "kernels": {"_tiles": 2.5}, "waited_s": 0.4},
                "cpu_through_first_forward_s": 3.0, "import_s": 0.5, "build_s": 0.1, "first_forward_s": 4.2 if len(calls) == 1 else 0.3,
                "second_forward_s": 0.05, "process_s": 5.0, "kernels": kernels if len(calls) == 1 else []}

    monkeypatch.setattr(cold, "_child", fake_child)
    r = cold.run_cold("tiny")
    assert len(calls) == 2 and calls[0] == calls[1]            # the warm start reads the cache the cold one filled
    assert r["compile_s"] == pytest.approx(4.0)
    text = cold.format_cold(r)
    assert "_matmul_bias_act" in text and "75 %" in text and "(f32[2d],)" in text
    assert "_tiles 2.50" in text and "waited 0.40 s" in text
    assert text.index("_matmul_bias_act") < text.index("_attention_block")


@pytest.mark.slow
def test_cold_start_child_compiles_and_reports_the_kernels(tmp_path):
    from refpose.porting.bench import cold

    r = cold._child("tiny", 1, 0, str(tmp_path))
    names = {k["kernel"] for k in r["kernels"]}
    assert {"_matmul_bias_act", "_depthwise_conv"} <= names
    assert all(k["compile_s"] >= 0 for k in r["kernels"])


def test_no_numpy_leaves_out_the_reference_path():
    r = bench.run_bench("tiny", threads=1, runs=1, optional=False, memory=False, numpy=False)
    assert [c["name"] for c in r["candidates"]] == [bench.FAST]
