"""int8 candidates of the bench (`refpose bench --int8`): refpose's int8 fast path, and ONNX Runtime
and OpenVINO running the same model as QDQ ONNX (`refpose.quant.onnx_qdq`).

The int8 model is the bench's seeded weights quantized by `refpose.quant.quantize` with min-max
ranges from the bench input itself (one calibration pass; for timing, the ranges only have to be
those of the model the runtimes also get). Each int8 candidate is checked against refpose's int8
oracle (the NumPy reference of the same int8 model) at the heatmap tolerance of
`refpose.quant.report.tolerances`, not against float64: the quantization error is not the
candidate's.
"""
from __future__ import annotations

import os

import numpy as np

from .candidates import Candidate, _installed, _timed

INT8 = "refpose int8"
ORT_INT8 = "onnxruntime int8"
OPENVINO_INT8 = "openvino int8"


def int8_candidates(tensors, cfg, x: np.ndarray, threads: int, workdir: str, progress) -> tuple[list, list[str]]:
    """The int8 candidates where their runtimes are installed, and a note for each one skipped."""
    from ...quant import simd
    from ...quant.fileformat import QuantizedWGNet
    from ...quant.quantize import calibrate, quantize_tensors
    from ...quant.report import tolerances
    from ...weights import from_tensors

    progress("quantizing the seeded weights (min-max on the bench input)")
    float_model = from_tensors(tensors, cfg, "float32", "reference")
    qtensors = quantize_tensors(float_model, calibrate(float_model, x, "minmax"))
    for a in qtensors.values():
        a.setflags(write=False)
    oracle = QuantizedWGNet(qtensors, cfg, "reference")
    ref = oracle(x)
    bound = tolerances(oracle)["head"] / float(np.abs(ref).max())
    model, setup = _timed(lambda: QuantizedWGNet(qtensors, cfg, "fast"))
    cands = [Candidate(f"{INT8} ({simd.INSTRUCTION})", lambda: model(x), setup)]
    skipped = []
    wanted = [(ORT_INT8, "onnxruntime", "onnx"), (OPENVINO_INT8, "openvino", "openvino")]
    wanted = [w for w in wanted if _installed(w[1]) or skipped.append(f"{w[0]}: skipped ({w[1]} is not installed)")]
    if wanted:
        if not _installed("onnx"):
            skipped += [f"{name}: skipped (the QDQ export needs onnx)" for name, _, _ in wanted]
            wanted = []
        else:
            from ...quant.onnx_qdq import export_qdq

            progress("exporting the int8 model as QDQ ONNX")
            path = os.path.join(workdir, f"{cfg.name}.int8.onnx")
            export_qdq(qtensors, cfg, (), path)
    for name, _, _ in wanted:
        progress(f"building {name}")
        if name == ORT_INT8:
            from ..runtimes import ort_session

            session, setup = _timed(lambda: ort_session(path, threads))
            cands.append(Candidate(name, lambda: session.run(["heatmaps"], {"input": x})[0], setup))
        else:
            from ..runtimes import openvino_compile

            request, setup = _timed(lambda: openvino_compile(path, threads).create_infer_request())

            def forward(request=request):
                request.infer({0: x})
                return request.get_output_tensor(0).data.copy()
            cands.append(Candidate(name, forward, setup))
    for c in cands:
        c.reference, c.bound = ref, bound
    return cands, skipped
