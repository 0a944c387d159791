"""ONNX export of WGNet through the PyTorch twin (needs torch and onnx).

The exported graph is the twin (refpose/twin.py) in eval mode and float32, traced with the
TorchScript exporter (`torch.onnx.export(..., dynamo=False)`; the torch.export-based exporter
needs onnxscript, an extra dependency). Its interface is the one other backends are checked
against (DESIGN section 5):

- one input `input`, float32 (N, 3, H, W) with a dynamic batch N and the config's H, W;
- the output `heatmaps` (N, K, H/4, W/4), K = 17 keypoints;
- every stage's output tensor is named `stem, s1, s2, s3, s4, d1, d2, d3` (NCHW) inside the
  graph, so that `refpose oracle` can expose them and name the first stage that diverges; with
  `taps=True` they are graph outputs as well.

The file carries metadata `refpose.config` (the config as JSON) and `refpose.taps`, so a
checker can tell which config it was exported for.
"""
from __future__ import annotations

import io
import warnings

import numpy as np

from ..config import TAPS, WGNetConfig, get_config
from ..errors import BackendError, WeightsError
from ..fileio import check_output_path, write_atomic

INPUT_NAME = "input"
OUTPUT_NAME = "heatmaps"
TAP_OUTPUTS = TAPS[:-1]      # every stage output; "head" is the heatmaps output itself
META_CONFIG = "refpose.config"
META_TAPS = "refpose.taps"
DEFAULT_OPSET = 17   # the first opset with LayerNormalization as one node
OPSETS = range(13, 21)   # tested; 20 is the TorchScript exporter's last opset


def resolve_weights(weights, config=None) -> tuple[dict[str, np.ndarray], WGNetConfig]:
    """Tensors and config from a weights file (its own config, or `config` if it carries none)
    or from a dict of arrays (then `config` is required)."""
    if isinstance(weights, dict):
        if config is None:
            raise WeightsError("weights given as a dict of arrays need a config (name or object)")
        return weights, get_config(config)
    from ..weights import read_weights

    wf = read_weights(weights)
    return wf.tensors, wf.config_for(config)


def twin_from_weights(tensors: dict[str, np.ndarray], config, dtype: str = "float32"):
    """The PyTorch twin in eval mode with these tensors (strictly) loaded, in `dtype`."""
    import torch

    from .twin import WGNetTwin

    model = WGNetTwin(config).eval().to(getattr(torch, dtype))
    try:
        model.load_numpy(tensors)
    except ValueError as e:
        raise WeightsError(f"weights do not fit config {get_config(config).name!r}: {e}") from None
    return model


def _tapped(twin):
    """A module whose forward returns the heatmaps, then the stage outputs, as a tuple."""
    import torch

    class Tapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.twin = twin

        def forward(self, x):
            out = self.twin.forward_taps(x)
            return (out["head"],) + tuple(out[k] for k in TAP_OUTPUTS)

    return Tapped().eval()


def export_onnx(weights, config, out_path, opset: int = DEFAULT_OPSET, taps: bool = False) -> WGNetConfig:
    """Export the twin with these weights to an ONNX file at `out_path` (written atomically).

    `weights` is a weights-file path (then `config` may be None) or a dict of numpy arrays in
    PyTorch layouts (DESIGN section 3). Returns the config exported.
    """
    try:
        import onnx
        import torch
    except ImportError as e:
        raise BackendError(f"ONNX export needs torch and onnx ({e.name} is missing): "
                           "pip install 'refpose[onnx]'") from None
    if int(opset) not in OPSETS:
        raise BackendError(f"opset {opset} is not supported: use {OPSETS.start}..{OPSETS.stop - 1}")
    if not isinstance(weights, dict):
        check_output_path(out_path, [weights])     # before the export, not after it
    tensors, cfg = resolve_weights(weights, config)
    model = _tapped(twin_from_weights(tensors, cfg, "float32"))
    # the stages are always exported as outputs, which gives their tensors these names; without
    # taps they are then dropped from the outputs and stay in the graph under their names
    names = [OUTPUT_NAME] + list(TAP_OUTPUTS)
    H, W = cfg.input_size
    example = torch.zeros(2, 3, H, W)     # batch 2, so that nothing specialises on a batch of 1
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the tracer warns on the twin's Python checks of H and W, which are fixed in the graph,
        # and on the legacy exporter itself
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad():
                torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=int(opset),
                                  input_names=[INPUT_NAME], output_names=names,
                                  dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME] + names},
                                  do_constant_folding=True)
        except Exception as e:   # the exporter raises several types for an unsupported opset
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(f"ONNX export at opset {opset} failed: {reason}") from None
    proto = onnx.load_from_string(buffer.getvalue())
    if not taps:
        stages = [o for o in proto.graph.output if o.name in TAP_OUTPUTS]
        proto.graph.value_info.extend(stages)          # their types and shapes stay known
        for o in stages:
            proto.graph.output.remove(o)
    for key, value in ((META_CONFIG, cfg.to_json()), (META_TAPS, ",".join(TAP_OUTPUTS) if taps else "")):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    write_atomic(out_path, proto.SerializeToString())
    return cfg
