"""The int8 weights file: its keys, their strict check, and the model it loads into.

An int8 file is a safetensors file with metadata `format` = `refpose-int8/1`, `config`, `trained`,
`float_stages` (comma-separated stages kept in float, often empty) and `calibration` (JSON: method,
images, crops). Keys (every path as in the float file, DESIGN section 3; conv units lose their
`.conv` / `.bn` level because BatchNorm is folded before quantizing):

    P.weight        int8, the folded conv / linear weight in its PyTorch layout, symmetric
    P.weight_scale  float32 (Cout,): per output channel (axis 1 for a transposed conv)
    P.bias          int32 (Cout,): the folded bias in steps of input scale x weight scale
    N.y_scale       float32 (): scale of activation tensor N (see `refpose.quant.network`)
    N.y_zero_point  uint8 (): its zero point
    P.weight, P.bias  float32 for a LayerNorm, and for every unit of a stage kept in float

The head has no y_scale: its output is float. Nothing of the float file is needed to run it.
"""
from __future__ import annotations

import json

import numpy as np

from ..config import get_config
from ..errors import ConfigError, InputShapeError, WeightsError
from ..fileio import check_key_set
from ..layers import ConvBN, walk
from ..model import check_batch
from . import qdq
from .network import STAGE_NAMES, Float, Int8, QTensor, Walk, check_stages

FORMAT = "refpose-int8/1"             # refpose.weights.INT8_FORMAT: how read_weights tells an int8 file


def stage_of(path: str) -> str:
    """The stage a key belongs to: stem, s1..s4, d1..d3, head, or input."""
    return path.split(".", 1)[0]


class _Layout:
    """An arithmetic for `Walk` that runs on shapes and writes down every tensor the walk needs:
    `units` {path: (float weight shape, output axis, kind)} and `acts` (activation names)."""

    def __init__(self, cfg):
        from ..model import WGNet

        self.layers = {p: l for p, l in walk(WGNet(cfg, impl="reference"))}
        self.units, self.acts, self.norms = {}, [], {}

    def has(self, path):
        return path in self.layers

    @staticmethod
    def shape(x):
        return x

    def convert(self, x, name):
        if name == "input":
            self.acts.append("input")
        return x

    def _unit(self, path, kind):
        layer = self.layers[path]
        if isinstance(layer, ConvBN):
            shape = layer.tensor_shapes()["conv.weight"]
        else:
            shape = layer.tensor_shapes()["weight"]
        axis = 1 if kind == "transposed" else 0
        self.units[path] = (tuple(shape), axis)
        return shape[axis]

    def conv(self, path, x, kind, k, stride, act):
        cout = self._unit(path, kind)
        N, H, W, _ = x
        if kind == "transposed":
            H, W = H * k, W * k
        else:
            H, W = (H + 2 * (k // 2) - k) // stride + 1, (W + 2 * (k // 2) - k) // stride + 1
        self.acts.append(path)
        return (N, H, W, cout)

    def linear(self, path, x):
        cout = self._unit(path, "linear")
        self.acts.append(path)
        return x[:-1] + (cout,)

    def add(self, name, a, b):
        self.acts.append(name)
        return b

    def layer_norm(self, path, x):
        self.norms[path] = (x[-1],)
        self.acts.append(path)
        return x

    def attention(self, path, qkv, heads, kind, window, patch):
        self.acts += [f"{path}.scores", f"{path}.attn"]
        return qkv[:-1] + (qkv[-1] // 3,)

    def squeeze_excite(self, path, x):
        self.acts.append(f"{path}.pool")
        self._unit(f"{path}.fc1", "conv")
        self._unit(f"{path}.fc2", "conv")
        self.acts += [f"{path}.fc1", f"{path}.fc2", path]
        return x

    def head(self, path, x):
        self._unit(path, "conv")
        return x


def layout(config):
    """(units, activation names, LayerNorms) of a config: what an int8 file of it holds."""
    cfg = get_config(config)
    lay = _Layout(cfg)
    H, W = cfg.input_size
    Walk(cfg).run(lambda stage: lay, (1, H, W, 3))
    return lay.units, lay.acts, lay.norms


def expected_keys(config, float_stages=()) -> dict[str, tuple[tuple, str]]:
    """{key: (shape, dtype)} of an int8 file of `config` with these stages kept in float."""
    units, acts, norms = layout(config)
    floats = set(float_stages)
    keys = {}
    for path, (shape, axis) in units.items():
        if stage_of(path) in floats:
            keys[f"{path}.weight"] = (shape, "float32")
            keys[f"{path}.bias"] = ((shape[axis],), "float32")
        else:
            keys[f"{path}.weight"] = (shape, "int8")
            keys[f"{path}.weight_scale"] = ((shape[axis],), "float32")
            keys[f"{path}.bias"] = ((shape[axis],), "int32")
    for path, shape in norms.items():
        keys[f"{path}.weight"] = (shape, "float32")
        keys[f"{path}.bias"] = (shape, "float32")
    for name in acts:
        keys[f"{name}.y_scale"] = ((), "float32")
        keys[f"{name}.y_zero_point"] = ((), "uint8")
    return keys


def check_int8_tensors(tensors: dict, config, float_stages, source: str) -> None:
    """Strict check of an int8 file's tensors: the key set, shapes, dtypes, finite floats,
    positive scales, zero points in range. WeightsError naming the key."""
    expected = expected_keys(config, float_stages)
    check_key_set(tensors, {k: shape for k, (shape, _) in expected.items()}, source)
    for key, (shape, dtype) in expected.items():
        a = tensors[key]
        if tuple(a.shape) != tuple(shape):
            raise WeightsError(f"{source}: key {key!r} has shape {tuple(a.shape)}, expected {tuple(shape)}")
        if a.dtype != np.dtype(dtype):
            raise WeightsError(f"{source}: key {key!r} has dtype {a.dtype}, expected {dtype}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise WeightsError(f"{source}: key {key!r} has non-finite values")
        if key.endswith("scale"):
            qdq.check_scale(a, f"{source}: key {key!r}: a scale")
        if key.endswith(".weight") and a.dtype == np.int8 and (a == -128).any():
            raise WeightsError(f"{source}: key {key!r}: symmetric int8 weights lie in [-127, 127], found -128")


def float_stages_of(meta: dict, source: str) -> tuple[str, ...]:
    text = meta.get("float_stages", "")
    try:
        return check_stages([s for s in text.split(",") if s])
    except ConfigError as e:
        raise WeightsError(f"{source}: metadata float_stages: {e}") from None


class QuantizedWGNet:
    """The int8 network: `model(x)` maps float inputs (N, 3, H, W) to float32 heatmaps, like
    `refpose.WGNet`; `impl` "reference" runs the int8 oracle (plain NumPy), "fast" the Numba
    kernels, which give the same integers."""

    dtype = np.dtype(np.float32)

    def __init__(self, tensors: dict, config, impl: str = "fast", float_stages=(), float_dtype="float32"):
        from . import reference

        self.config = get_config(config)
        self.float_stages = check_stages(float_stages)
        self.impl = impl
        if impl == "fast":
            from ..threads import policy
            from . import fast

            policy()
            ops = fast
        elif impl == "reference":
            ops = reference
        else:
            raise ValueError(f"unknown op implementation {impl!r}; choose reference or fast")
        self.tensors = tensors
        self.int8 = Int8(tensors, ops)
        weights = {}
        for key, a in tensors.items():
            path, _, leaf = key.rpartition(".")
            if leaf == "weight" and a.dtype.kind == "f":
                weights[path] = (a, tensors[f"{path}.bias"])
        self.float = Float(weights, float_dtype)
        self.walk = Walk(self.config)
        self.trained: bool | None = None
        self.source: str | None = None

    def arithmetic(self, stage: str):
        return self.float if stage in self.float_stages else self.int8

    def run(self, x: np.ndarray) -> dict:
        """Every stage's output (NHWC QTensor, or float for a float stage) and the head's (float32)."""
        return self.walk.run(self.arithmetic, self._check_input(x).transpose(0, 2, 3, 1))

    def taps(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every stage's output dequantized to float32, NCHW, in the order of TAPS."""
        out = {}
        for k, v in self.run(x).items():
            v = qdq.dequantize_linear(v.q, v.scale, v.zero) if isinstance(v, QTensor) else v
            out[k] = np.ascontiguousarray(np.asarray(v, np.float32).transpose(0, 3, 1, 2))
        return out

    def forward(self, x: np.ndarray) -> np.ndarray:
        head = self.run(x)["head"]
        return np.ascontiguousarray(np.asarray(head, np.float32).transpose(0, 3, 1, 2))

    __call__ = forward

    def _check_input(self, x) -> np.ndarray:
        x = check_batch(x)
        if tuple(x.shape[2:]) != tuple(self.config.input_size):
            raise InputShapeError(f"an int8 model takes the input size it was calibrated at, "
                                  f"{self.config.input_size}, got {tuple(x.shape[2:])}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def __repr__(self):
        return f"QuantizedWGNet(config={self.config.name!r}, impl={self.impl!r}, float_stages={self.float_stages})"


def int8_model(tensors: dict, meta: dict, config, source: str, impl: str = "fast") -> QuantizedWGNet:
    """The model of an int8 file's tensors and metadata (from `refpose.weights.read_weights`),
    strictly checked."""
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{source}: not an int8 weights file (format {meta.get('format')!r}, "
                           f"expected {FORMAT!r}); quantize a float file with `refpose quantize`")
    float_stages = float_stages_of(meta, source)
    check_int8_tensors(tensors, config, float_stages, source)
    tensors = {k: _frozen(a) for k, a in tensors.items()}
    model = QuantizedWGNet(tensors, config, impl, float_stages)
    model.source = source
    return model


def _frozen(a: np.ndarray) -> np.ndarray:
    """The model's own read-only copy (the fast path keeps what it packs from a read-only weight)."""
    a = np.array(a, order="C", copy=True)
    a.setflags(write=False)
    return a


def calibration_of(meta: dict) -> dict:
    try:
        return json.loads(meta.get("calibration", "{}"))
    except ValueError:
        return {}


__all__ = ["FORMAT", "QuantizedWGNet", "check_int8_tensors", "expected_keys", "int8_model", "layout",
           "STAGE_NAMES"]
