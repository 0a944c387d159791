"""Where an int8 model loses its accuracy, and whether an int8 port computes refpose's integers.

Stage report (`refpose oracle --quant W.int8.safetensors --float W.safetensors --images DIR`): on
the crops of the images, against the float network in float64 (the oracle path),

- per stage of the int8 model: the error of its output, relative (max|q - f| / max|f|) and as a
  signal-to-noise ratio, 10 log10(sum f^2 / sum (q - f)^2) dB;
- per stage alone: the heatmaps' mean squared error when only that stage is quantized (the rest
  float64, the stage's input and output quantized as in the int8 model), and its share of the
  sum over the stages (errors from independent sources add in their squares);
- the stage whose quantization alone costs the heatmaps most.

Port check (`refpose oracle --onnx m.int8.onnx --weights W.int8.safetensors`, the conformance
suite with an int8 file): a port of the QDQ model against refpose's int8 oracle, in steps of each
tap's own scale. A port that evaluates the QDQ graph in float32 differs from the exact integers
only where a value lies within float rounding of a step boundary; there its code moves by one
step, and the change travels on: through every later quantizer it may move a code by one more
step, independently of the others. Over n quantizers (counted in network order up to the tap)
these add like a random walk, sqrt(n) steps; the tolerance is four times that,

    max |port - oracle| <= 4 sqrt(n) steps of the tap's scale,

and for the heatmaps (float, a 1x1 conv of d3) that bound on d3 carried through the head:
4 sqrt(n_d3) s_d3 max_c sum_k |W_head[c, k]|. Measured: see docs/int8.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import TAPS
from .network import Float, Int8, QTensor, Walk, float_weights, stage_output

STEP_FACTOR = 4


def quantizers_before(config) -> dict[str, int]:
    """{tap: the number of activation quantizers up to and including the tap's output}."""
    from .fileformat import layout

    _, acts, _ = layout(config)
    n = {t: acts.index(stage_output(config, t)) + 1 for t in TAPS[:-1]}
    n["head"] = n["d3"]
    return n


def tolerances(model) -> dict[str, float]:
    """{tap: tolerance}: in steps of the tap's scale for the stages; for the heatmaps, absolute."""
    n = quantizers_before(model.config)
    tol = {t: STEP_FACTOR * float(np.sqrt(k)) for t, k in n.items() if t != "head"}
    if "head" in model.float_stages or "d3" in model.float_stages:
        tol["head"] = float("nan")
        return tol
    w = model.tensors["head.weight"].astype(np.float64) * model.tensors["head.weight_scale"].astype(np.float64)[:, None, None, None]
    s_d3 = float(model.tensors[f"{stage_output(model.config, 'd3')}.y_scale"])
    tol["head"] = tol["d3"] * s_d3 * float(np.abs(w).sum(axis=(1, 2, 3)).max())
    return tol


@dataclass
class PortTap:
    name: str
    max_steps: float          # max |port - oracle| in steps of the tap's scale (heatmaps: absolute)
    over_one: float           # share of elements more than one step apart (heatmaps: nan)
    tolerance: float
    f64_rel: float            # the port's max|port - f64| / max|f64| (the quantization error itself)

    @property
    def within(self) -> bool:
        return not self.max_steps > self.tolerance


def compare_port(got: dict, model, x: np.ndarray, f64: dict | None = None) -> list[PortTap]:
    """A port's taps (NCHW float, "head" the heatmaps) against the int8 oracle on inputs x."""
    ref = model.run(x)
    tol = tolerances(model)
    out = []
    for tap in TAPS:
        if tap not in got:
            continue
        r = ref[tap]
        g = np.asarray(got[tap], np.float64).transpose(0, 2, 3, 1)
        if isinstance(r, QTensor):
            dq = (r.q.astype(np.float64) - float(r.zero)) * float(r.scale)
            steps = np.abs(g - dq) / float(r.scale)
            m, over = float(steps.max()), float((steps > 1.5).mean())
        else:
            m, over = float(np.abs(g - np.asarray(r, np.float64)).max()), float("nan")
        rel = float("nan")
        if f64 is not None:
            fr = f64[tap]
            rel = float(np.abs(np.asarray(got[tap], np.float64) - fr).max() / np.abs(fr).max())
        out.append(PortTap(tap, m, over, tol[tap], rel))
    return out


def port_lines(rows: list[PortTap]) -> list[str]:
    """The port's table; the float64 column is "-" without float weights (`--float`)."""
    lines = ["taps against refpose's int8 oracle (steps of each tap's scale; heatmaps absolute) and float64:",
             f"  {'tap':5s} {'max':>8s} {'> 1 step':>9s} {'tolerance':>10s} {'vs f64 rel':>11s}"]
    first = next((r for r in rows if not r.within), None)
    for r in rows:
        mark = "ok" if r.within else "DIVERGES" + ("  <- first" if r is first else "")
        over = "-" if np.isnan(r.over_one) else f"{100 * r.over_one:.2f} %"
        f64 = "-" if np.isnan(r.f64_rel) else f"{r.f64_rel:.3g}"
        lines.append(f"  {r.name:5s} {r.max_steps:8.3g} {over:>9s} {r.tolerance:10.3g} {f64:>11s}  {mark}")
    return lines


# --- where the accuracy goes -----------------------------------------------------------------------
@dataclass
class StageRow:
    name: str
    rel: float           # full int8 model: max|q - f| / max|f| at the stage's output
    snr_db: float
    alone_mse: float     # heatmap MSE with only this stage quantized
    share: float         # alone_mse / sum of alone_mse


def _snr(ref, got) -> float:
    noise = float(((got - ref) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((ref ** 2).sum()) / noise)


def stage_report(model, float_model, x: np.ndarray) -> tuple[list[StageRow], dict]:
    """Per stage: the int8 model's error against float64, and the heatmaps' error when only that
    stage is quantized. `model` an int8 model (reference ops), `float_model` the float weights'
    model (any dtype: its folded weights are used in float64)."""
    walk = Walk(model.config)
    f64 = Float(float_weights(float_model), "float64")
    int8 = Int8(model.tensors, model.int8.ops)
    xt = np.asarray(x, np.float64).transpose(0, 2, 3, 1)
    ref = walk.run(lambda s: f64, xt)
    full = walk.run(lambda s: f64 if s in model.float_stages else int8, xt)

    def as_float(v):
        return (v.q.astype(np.float64) - float(v.zero)) * float(v.scale) if isinstance(v, QTensor) else np.asarray(v, np.float64)

    rows = []
    for stage in TAPS:
        got = as_float(full[stage])
        rel = float(np.abs(got - ref[stage]).max() / np.abs(ref[stage]).max())
        alone = walk.run(lambda s, stage=stage: int8 if s == stage else f64, xt)
        mse = float(((as_float(alone["head"]) - ref["head"]) ** 2).mean())
        rows.append(StageRow(stage, rel, _snr(ref[stage], got), mse, 0.0))
    total = sum(r.alone_mse for r in rows)
    for r in rows:
        r.share = r.alone_mse / total if total else 0.0
    head_mse = float(((as_float(full["head"]) - ref["head"]) ** 2).mean())
    return rows, {"heatmap_mse": head_mse, "heatmap_rel": rows[-1].rel, "worst": max(rows, key=lambda r: r.alone_mse).name}


def stage_lines(rows: list[StageRow], summary: dict) -> list[str]:
    lines = ["per stage, against float64 (int8 model: output error; alone: heatmap MSE with only that stage quantized):",
             f"  {'stage':5s} {'rel err':>8s} {'SNR dB':>7s} {'alone MSE':>10s} {'share':>6s}"]
    for r in rows:
        lines.append(f"  {r.name:5s} {r.rel:8.3g} {r.snr_db:7.1f} {r.alone_mse:10.3g} {100 * r.share:5.1f} %")
    lines.append(f"heatmaps of the int8 model: MSE {summary['heatmap_mse']:.3g}, rel err {summary['heatmap_rel']:.3g}")
    lines.append(f"the stage that loses most: {summary['worst']} (keep it in float: refpose quantize ... "
                 f"--float-stages {summary['worst']})")
    return lines
