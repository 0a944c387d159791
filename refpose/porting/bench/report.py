"""The tables `refpose bench` prints."""
from __future__ import annotations

from .candidates import FAST, FAST_COPY, NUMPY, OPENVINO, ORT, TORCH
from .timing import AA_BAND


def format_result(r: dict) -> str:
    """The table `refpose bench` prints."""
    from tabulate import tabulate

    from ...ops.kernels import PANEL

    N, _, H, W = r["input"]
    lines = [f"refpose bench: config {r['config']}, input {N}x3x{H}x{W}, {r['threads']} thread(s), "
             f"{r['runs']} rounds (candidates alternate, in balanced orders)"]
    def mb(v):
        return "-" if v is None else f"{v:.0f}"

    rows = [[c["name"], f"{c['median_ms']:.1f}", f"{c['min_ms']:.1f}", f"{c['ratio']:.2f}",
             "-" if c is r["candidates"][0] else "{:.2f}-{:.2f}".format(*c["ratio_interval"]),
             f"{c['gmacs_per_s']:.1f}", f"{100 * c['of_sgemm']:.0f} %",
             mb(c.get("peak_rss_mb")), mb(c.get("forward_rss_mb")),
             f"{c['max_rel_diff']:.1e}" + ("" if c["agrees"] else "  DISAGREES")] for c in r["candidates"]]
    lines.append(tabulate(rows, headers=["candidate", "median ms", "min ms", "x fast", "95 % interval", "GMAC/s",
                                         "of sgemm", "peak RSS MB", "fwd +MB", "max |diff| / max |ref|"],
                          colalign=("left",) + ("right",) * 9, disable_numparse=True))
    by_name = {c["name"]: c["median_ms"] for c in r["candidates"]}
    vs = [f"{a} / {b} = {by_name[a] / by_name[b]:.2f}" for a in (FAST, NUMPY) for b in (TORCH, ORT, OPENVINO)
          if a in by_name and b in by_name]
    if vs:
        lines.append("median latency ratios: " + ", ".join(vs))
    int8 = [c for c in r["candidates"] if c["name"].startswith("refpose int8")]
    if int8:
        q = int8[0]["name"]
        vs = [f"{q} / {b} = {by_name[q] / by_name[b]:.2f}" for b in (FAST, "onnxruntime int8", "openvino int8")
              if b in by_name]
        lines.append("int8: " + ", ".join(vs) + "; int8 candidates are checked against refpose's int8 oracle "
                     f"(bound {int8[0]['bound']:.2g} of max|ref|), not float64")
    s = r["sgemm"]
    lines.append(f"yardstick: numpy sgemm {s['n']}^3 float32 {s['median_ms']:.2f} ms = {s['gmacs_per_s']:.0f} GMAC/s "
                 f"({s['gflops']:.0f} GFLOP/s), same run")
    blas = "; ".join(f"{b['internal_api']} {b['version']} ({b['architecture']}, {b['threading_layer']}, "
                     f"{b['num_threads']} threads)" for b in r["blas"]) or "unknown (threadpoolctl not installed)"
    tile = r["fast_path"]
    lines.append(f"BLAS: {blas}; Numba {r['numba']['version']}, threading layer {r['numba']['threading_layer']}; "
                 f"fast-path matmul tiles of {tile['tile_rows']} rows x {PANEL} vectors of "
                 f"{tile['vector_bits']} bits")
    cache = r["kernel_cache"]
    how = ("compiled" if cache["misses"] else "loaded from the on-disk cache" if cache["hits"]
           else "already loaded in this process")
    lines.append(f"first run of {FAST}: {r['fast_first_run_s']:.2f} s (kernels {how}: "
                 f"{cache['hits']} cache hits, {cache['misses']} misses)")
    lines.append(f"timing: {r['warmup']} untimed warm-up runs each; every timed call starts with the process idle "
                 f"(spinning pools waited out); OMP_WAIT_POLICY={r['env']['OMP_WAIT_POLICY']}; "
                 "ONNX Runtime spinning off; OpenVINO threads not pinned")
    if any(c.get("peak_rss_mb") is not None for c in r["candidates"]):
        lines.append("peak RSS: VmHWM of a child process that built only that candidate and ran two forwards; "
                     "fwd +MB: what the forwards added to the built candidate's resident set")
    lines.append(f"MACs per forward {r['macs']:,} (counted; 1 FLOP = 1 MAC as in the paper); max |diff| is against "
                 f"the float64 NumPy reference, bound {r['agree_bound']:g}")
    lines.append("95 % interval: bootstrap over the rounds (both candidates of a round resampled together) "
                 "of the ratio of medians; on a shared machine it is the run's own noise")
    if r["aa"]:
        verdict = "fair" if r["aa_fair"] else "NOT within"
        lo, hi = r["aa_interval"]
        noisy = "" if r["aa_fair"] or not lo <= 1 <= hi else "; the interval holds 1.00: this run was too noisy to tell"
        lines.append(f"A/A: {FAST_COPY} / {FAST} = {r['aa_ratio']:.3f} ({verdict} 1.00 +- {AA_BAND:.2f}; "
                     f"95 % interval {lo:.3f}-{hi:.3f}{noisy})")
    if r.get("torch_first"):
        base = r["candidates"][0]
        lines.append("torch first: " + ", ".join(f"{c['name']} / {base['name']} = {c['ratio']:.3f} (95 % interval "
                                                 "{:.3f}-{:.3f})".format(*c["ratio_interval"]) for c in r["candidates"][1:]))
        lines.append("each process: " + "; ".join(
            f"{k}: {v['kernel_threads']} kernel threads ({v['layer']})"
            + (", an OpenMP runtime loaded before refpose" if v["openmp_loaded_first"] else "")
            for k, v in r["workers"].items()))
    lines += [f"note: {n}" for n in r["skipped"] + r["notes"]]
    return "\n".join(lines)


def format_profile(r: dict) -> str:
    """The tables `refpose bench --profile` prints."""
    from tabulate import tabulate

    N, _, H, W = r["input"]

    def table(rows, what):
        return tabulate([[x["name"], f"{x['ms']:.1f}", f"{100 * x['share']:.0f} %", x["calls"] or ""] for x in rows],
                        headers=[what, "ms / forward", "share", "calls"], colalign=("left", "right", "right", "right"),
                        disable_numparse=True)
    fast = r["fast"]
    lines = [f"refpose bench --profile: config {r['config']}, input {N}x3x{H}x{W}, {r['threads']} thread(s), "
             f"{r['runs']} forwards after warm-up; wall time, ms per forward",
             f"{FAST}: {fast['total_ms']:.1f} ms per forward (mean)", table(fast["by_op"], "op kind"), "",
             table(fast["by_stage"], "stage")]
    if r["ort"]:
        lines += ["", f"{ORT} (its own profiler, node kernel time by op type): {r['ort']['total_ms']:.1f} ms per "
                  "forward (mean of its model_run events)", table(r["ort"]["by_op"], "op type")]
    blas = "; ".join(f"{b['internal_api']} {b['version']} ({b['architecture']})" for b in r["blas"]) or "unknown"
    lines.append(f"BLAS: {blas}; OPENBLAS_CORETYPE={r['env']['OPENBLAS_CORETYPE']}")
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)
