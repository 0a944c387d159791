"""What the conformance suite checks, apart from pytest: its cases, inputs and verdicts.

A case is (config, precision, batch size, input kind); every case checks the taps in network
order (stem, s1..s4, d1..d3, heatmaps), one test each, so that the first diverging stage is the
name of the first failing test and the later ones are skipped, naming it. The comparison and
its report are refpose.porting.oracle's (`compare`, `Comparison.table`), at its stated tolerances.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from ...config import CONFIGS, WGNetConfig, get_config
from ...errors import DataError, RefposeError, WeightsError
from ..onnx_export import OUTPUT_NAME, TAP_OUTPUTS
from ...fileio import read_npz
from ..oracle import (MAX_GOLDEN_BYTES, Comparison, compare, load_dump, make_inputs, reference_model,
                      stated_tolerance)

BATCHES = (1, 2, 3)
INPUT_KINDS = ("normal0", "normal1", "photo", "zeros", "plus5sigma", "minus5sigma")
PRECISIONS = {"fp32": "float32", "fp64": "float64", "fp16": "float16", "int8": "int8"}
PHOTO = "cameraman_crop.png"      # refpose/assets: a 256x192 crop of examples/cameraman.jpg (CC0)
STAGES = TAP_OUTPUTS + (OUTPUT_NAME,)   # test ids: the taps, "heatmaps" for "head"


# --- inputs -----------------------------------------------------------------------------------
def case_inputs(config, kind: str, n: int) -> np.ndarray:
    """n inputs (n, 3, H, W) of one kind, float64 and exactly representable in float32:

    normal0, normal1  standard normal, seeds 0 and 1 (the scale of a normalised image)
    photo             the shipped photo crop, resized and normalised as in DESIGN section 1;
                      then mirrored, then upside down
    zeros             the mean image
    plus5sigma, minus5sigma  every value at +5 or -5 standard deviations
    """
    cfg = get_config(config)
    H, W = cfg.input_size
    if kind.startswith("normal"):
        return make_inputs(cfg, n, seed=int(kind[len("normal"):]))
    if kind == "photo":
        if n > 3:
            raise DataError(f"the photo input has 3 variants, not {n}")
        x = photo_input(cfg)                                          # (3, H, W)
        x = np.stack([x, x[:, :, ::-1], x[:, ::-1, :]])[:n]           # (n, 3, H, W)
    else:
        level = {"zeros": 0.0, "plus5sigma": 5.0, "minus5sigma": -5.0}[kind]
        x = np.full((n, 3, H, W), level)
    return np.ascontiguousarray(x, dtype=np.float32).astype(np.float64)


def photo_input(cfg: WGNetConfig) -> np.ndarray:
    """The shipped photo at the config's input size, normalised: (3, H, W) float64."""
    import cv2

    from ...pose.imageio import read_image
    from ...pose.crop import normalize

    H, W = cfg.input_size
    with resources.as_file(resources.files("refpose") / "assets" / PHOTO) as path:
        image = read_image(path)                                   # (256, 192, 3) RGB
    image = cv2.resize(image, (W, H), interpolation=cv2.INTER_AREA)
    return normalize(image[None], dtype=np.float64)[0]


# --- cases and verdicts -----------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    config: str
    precision: str
    batch: int
    inputs: str

    @property
    def id(self) -> str:
        return f"{self.config}-{self.precision}-b{self.batch}-{self.inputs}"

    def describe(self) -> str:
        return f"config {self.config}, batch {self.batch}, input {self.inputs}"


@dataclass(frozen=True)
class Verdict:
    status: str          # "pass", "fail" or "skip"
    message: str = ""


@dataclass
class Suite:
    """The cases of one run and, computed once each, their comparisons.

    `backends` maps a config name to its backend (see refpose.porting.conformance.backends); in golden
    mode it is empty and `golden` holds the reference file and the port's outputs."""

    weights: str | None
    backends: dict
    precision: str
    golden: "tuple | None" = None        # (Golden, {tap: array}) for --refpose-golden
    int8: object = None                  # with an int8 weights file: refpose's int8 oracle (its model)
    _cache: dict = field(default_factory=dict)         # Case -> Comparison or the error it raised
    _models: dict = field(default_factory=dict)        # config -> refpose float64 model
    _references: dict = field(default_factory=dict)    # (config, input kind) -> taps at batch 3

    @property
    def rtol(self) -> tuple[float, str]:
        if self.int8 is not None:
            return 1.0, INT8_REASON
        return stated_tolerance(PRECISIONS[self.precision])

    def cases(self) -> list[Case]:
        if self.golden is not None:
            golden, _ = self.golden
            return [Case(golden.config.name, self.precision, len(golden.inputs), f"golden-seed{golden.seed}")]
        return [Case(name, self.precision, n, kind)
                for name in self.backends for n in BATCHES for kind in INPUT_KINDS]

    def comparison(self, case: Case) -> Comparison:
        """The backend's outputs for this case against refpose float64 (cached, errors too)."""
        if case not in self._cache:
            try:
                self._cache[case] = self._compare(case)
            except (RefposeError, AssertionError) as e:
                self._cache[case] = e
        result = self._cache[case]
        if isinstance(result, Exception):
            raise result
        return result

    def _compare(self, case: Case) -> Comparison:
        rtol, _ = self.rtol
        if self.golden is not None:
            golden, theirs = self.golden
            return compare(theirs, golden.taps, rtol)
        backend = self.backends[case.config]
        if self.int8 is not None:
            return _compare_int8(backend, self.int8, case_inputs(case.config, case.inputs, case.batch))
        fixed = getattr(backend, "batch", None)
        if fixed is not None and case.batch % fixed:
            raise _Unsupported(f"the model takes batches of exactly {fixed}")
        if case.config not in self._models:
            self._models[case.config] = reference_model(self.weights, case.config)
        key = (case.config, case.inputs)
        if key not in self._references:     # one reference run per input kind, at the largest batch
            x = case_inputs(case.config, case.inputs, max(BATCHES))
            self._references[key] = self._models[case.config].taps(x)
        reference = {k: v[:case.batch] for k, v in self._references[key].items()}
        x = case_inputs(case.config, case.inputs, case.batch)
        return compare(backend.run(x.astype(backend.dtype)), reference, rtol)

    def verdict(self, case: Case, stage: str) -> Verdict:
        """Pass, fail (with the oracle's report) or skip (not exposed; an earlier stage diverged)."""
        tap = "head" if stage == OUTPUT_NAME else stage
        try:
            result = self.comparison(case)
        except _Unsupported as e:
            return Verdict("skip", str(e))
        except (RefposeError, AssertionError) as e:
            return Verdict("fail", f"{case.describe()}: {e}")
        errors = {t.name: t for t in result.taps}
        if tap not in errors:
            return Verdict("skip", f"the backend does not expose {stage}")
        earlier = [t for t in result.taps[:result.taps.index(errors[tap])] if not t.within(result.rtol)]
        if earlier:
            return Verdict("skip", f"earlier stage {earlier[0].name} diverged")
        error = errors[tap]
        if error.within(result.rtol):
            return Verdict("pass")
        rtol, reason = self.rtol
        against = "refpose's int8 oracle (errors in steps)" if self.int8 is not None else "refpose float64"
        lines = [f"stage {stage} diverges from {against} ({case.describe()}):",
                 f"  {error.summary()}",
                 f"  largest at (n, c, h, w) = {error.where()}",
                 f"  tolerance {rtol:g} as max|got - ref| / max|ref|: {reason}"]
        return Verdict("fail", "\n".join(lines + result.table()))


INT8_REASON = ("int8 port against refpose's int8 oracle: max|port - oracle| <= 4 sqrt(n) steps of the tap's "
               "scale, n the quantizers before it (refpose.quant.report); errors shown as fractions of that bound")


def _compare_int8(backend, model, x) -> Comparison:
    """A port of an int8 file against refpose's int8 oracle, each tap's error as a fraction of its
    tolerance in steps (so the verdicts read rel <= 1)."""
    from ..oracle import TapError
    from ...quant.report import compare_port

    x = np.asarray(x, np.float32)
    taps = [TapError(r.name, r.max_steps, r.max_steps / r.tolerance, r.tolerance, (0,), r.max_steps, 0.0)
            for r in compare_port(backend.run(x), model, x)]
    return Comparison(next(t for t in taps if t.name == "head"), taps, 1.0)


class _Unsupported(RefposeError):
    """A case the backend cannot take (a fixed batch size)."""


# --- building a suite from the command line's values --------------------------------------------
def configs_allowed(weights: str, named: str | None = None) -> list[WGNetConfig]:
    """The configs a weights file loads under: the one named, the file's own, or else every
    named config whose tensors it has exactly (strict check)."""
    from ...model import WGNet
    from ...weights import check_tensors, read_weights

    wf = read_weights(weights)
    if wf.int8 or named is not None or wf.config is not None:
        return [wf.config_for(named)]
    fits = []
    for name in CONFIGS:
        try:
            check_tensors(wf.tensors, WGNet(name, impl="reference").tensor_shapes_all(), weights)
        except WeightsError:
            continue
        fits.append(get_config(name))
    if not fits:
        raise WeightsError(f"{weights}: the tensors fit none of the named configs ({', '.join(CONFIGS)})")
    return fits


def make_weights(path: str, config: str | None) -> None:
    """A seeded (seed 0), untrained weights file of `config` at `path`."""
    from ...weights import init_weights, save_weights

    if config is None:
        raise WeightsError(f"{path}: no such weights file; name a config (--refpose-config) to make "
                           "a seeded one there")
    save_weights(path, init_weights(config, seed=0), config, trained=False)


def default_precision(dtype) -> str:
    """The precision rule of a backend taking `dtype` inputs: fp32, fp64 or fp16."""
    return {"float32": "fp32", "float64": "fp64", "float16": "fp16"}.get(np.dtype(dtype).name, "fp32")


def build_suite(backend: str | None = None, weights: str | None = None, config: str | None = None,
                precision: str | None = None, taps: "dict[str, str] | None" = None,
                golden: str | None = None, outputs: str | None = None) -> Suite:
    """The suite the options describe (see refpose.porting.conformance.plugin); raises RefposeError."""
    from .backends import open_backend, parse_spec

    if golden is not None or outputs is not None:
        if backend is not None or golden is None or outputs is None:
            raise DataError("golden files are compared on their own: give --refpose-golden and "
                            "--refpose-outputs, without --refpose-backend")
        reference = load_dump(golden)
        return Suite(None, {}, precision or "fp32", (reference, read_outputs(outputs, len(reference.inputs))))
    if backend is None:
        raise DataError("give --refpose-backend SPEC (or --refpose-golden and --refpose-outputs)")
    if weights is None:
        raise WeightsError("give --refpose-weights FILE: the weights the backend computes with "
                           "(made, seeded, when the file does not exist)")
    parse_spec(backend, taps)
    from ...weights import weights_path

    weights = weights_path(weights)           # the name of shipped weights works as in every command
    if not os.path.exists(weights):
        make_weights(weights, config)
    backends = {}
    for cfg in configs_allowed(weights, config):
        b = open_backend(backend, weights, cfg, taps)
        b.check(cfg, weights)
        backends[cfg.name] = b
    dtype = next(iter(backends.values())).dtype
    from ...weights import load, read_weights

    if read_weights(weights).int8:          # an int8 file: the port is checked against the int8 oracle
        return Suite(weights, backends, "int8", int8=load(weights, impl="reference"))
    return Suite(weights, backends, precision or default_precision(dtype))


def read_outputs(path: str, n: int) -> dict[str, np.ndarray]:
    """A port's outputs (.npz, no pickle): `heatmaps` and any of stem, s1..s4, d1..d3."""
    arrays = read_npz(path, "outputs file", MAX_GOLDEN_BYTES)
    stray = [k for k in arrays if k not in STAGES and k != "input"]
    if stray or OUTPUT_NAME not in arrays:
        raise DataError(f"{path}: keys are {OUTPUT_NAME!r} and optionally {', '.join(TAP_OUTPUTS)} "
                        f"(and input); found {', '.join(arrays) or 'none'}")
    odd = [k for k, a in arrays.items() if a.ndim != 4 or a.dtype.kind != "f"]
    if odd:
        raise DataError(f"{path}: {odd[0]!r} must be an NCHW array of floating-point numbers, got shape "
                        f"{arrays[odd[0]].shape} ({arrays[odd[0]].dtype})")
    short = [k for k in arrays if k != "input" and len(arrays[k]) != n]
    if short:
        raise DataError(f"{path}: {short[0]!r} holds {len(arrays[short[0]])} outputs; the golden file has {n} inputs")
    return {k: v for k, v in arrays.items() if k != "input"}

