"""WGNet quantized: one walk of the network (stem, s1..s4, d1..d3, head, as `refpose.model`) run by
one of two arithmetics.

- `Int8`: the int8 network. Tensors are `QTensor`s (uint8 codes, scale, zero point); convs and
  linears are int8 x uint8 products summed in int32 and requantized; LayerNorm, softmax and
  sigmoid are computed in float from the dequantized codes and quantized again; the head's
  output is float. Its ops come from `refpose.quant.reference` (the oracle) or
  `refpose.quant.fast` (the same integers).
- `Float`: the float network through the same walk (float32 or float64, NumPy reference ops),
  optionally reporting every tensor the int8 network quantizes (`observe`, for calibration).

Activation tensors are named by the path of the layer whose output they are (`s1.ir.expand`,
`s1.blocks.0.win.qkv`), plus the steps inside a block: `X.norm`, `X.scores` and `X.attn` of an
attention sub-block X (its output, after the residual sum, is X itself), `U` for the residual
sum of an inverted residual U, `d{i}.sum` (the decoder's skip + up), `d{i}.se.pool`. A stage in
`float_stages` runs in float between the quantizations of its input and output, so that the
effect of quantizing one stage can be measured alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..config import TAPS, get_config
from ..errors import ConfigError
from ..layers import LN_EPS
from ..ops import reference as fref
from ..ops.geometry import clamp_window, partition, reverse
from . import qdq
from .reference import SOFTMAX, exp_table, sigmoid_table

STAGE_NAMES = TAPS[:-1]            # stem, s1..s4, d1..d3; the head follows d3


@dataclass
class QTensor:
    """uint8 codes (NHWC) with their per-tensor scale and zero point."""

    q: np.ndarray
    scale: np.float32
    zero: np.uint8

    @property
    def params(self):
        return self.scale, self.zero


# --- the walk ------------------------------------------------------------------------------------
def stage_output(cfg, stage: str) -> str:
    """The name of the tensor a stage outputs (whose quantization the next stage reads)."""
    if stage == "stem":
        return "stem.1.pw"
    s = cfg.stages[stage]
    if stage.startswith("d"):
        return f"{stage}.se"
    if s.depth:
        return f"{stage}.blocks.{s.depth - 1}.ffn"
    return f"{stage}.ir" if _ir_residual(cfg, stage) else f"{stage}.ir.project"


def _stage_input_channels(cfg, stage: str) -> int:
    names = [s.name for s in cfg.encoder]
    i = names.index(stage)
    return cfg.stem[1] if i == 0 else cfg.encoder[i - 1].channels


def _ir_residual(cfg, stage: str) -> bool:
    s = cfg.stages[stage]
    return s.stride == 1 and _stage_input_channels(cfg, stage) == s.channels


class Walk:
    """The forward of Fig. 1 as calls to an arithmetic `a` (`Int8` or `Float`)."""

    def __init__(self, config):
        self.cfg = get_config(config)

    def stem(self, a, x):
        k = self.cfg.stem_kernel
        for i in (0, 1):
            x = a.conv(f"stem.{i}.dw", x, "depthwise", k, 2, "relu6")
            x = a.conv(f"stem.{i}.pw", x, "conv", 1, 1, "relu6")
        return x

    def inverted_residual(self, a, path, x, stride, expand, residual):
        y = a.conv(f"{path}.expand", x, "conv", 1, 1, "relu6") if expand != 1 else x
        y = a.conv(f"{path}.dw", y, "depthwise", 3, stride, "relu6")
        y = a.conv(f"{path}.project", y, "conv", 1, 1, None)
        return a.add(path, x, y) if residual else y

    def attention(self, a, path, x, kind, stage):
        _, H, W, _ = a.shape(x)
        window = clamp_window(stage.window, H, W)
        t = a.layer_norm(f"{path}.norm", x)
        t = a.linear(f"{path}.qkv", t)
        t = a.attention(path, t, stage.channels // self.cfg.head_dim, kind, window, stage.patch)
        t = a.linear(f"{path}.proj", t)
        return a.add(path, x, t)

    def blocks(self, a, name, x):
        stage = self.cfg.stages[name]
        for j in range(stage.depth):
            path = f"{name}.blocks.{j}"
            if stage.window_attn:
                x = self.attention(a, f"{path}.win", x, "window", stage)
            if stage.global_attn:
                x = self.attention(a, f"{path}.glob", x, "global", stage)
            x = self.inverted_residual(a, f"{path}.ffn", x, 1, self.cfg.ffn_expand, True)
        return x

    def encoder(self, a, name, x):
        stage = self.cfg.stages[name]
        x = self.inverted_residual(a, f"{name}.ir", x, stage.stride, self.cfg.ir_expand, _ir_residual(self.cfg, name))
        return self.blocks(a, name, x)

    def decoder(self, a, name, x, skip):
        if a.has(f"{name}.skip"):
            skip = a.conv(f"{name}.skip", skip, "conv", 1, 1, None)
        x = a.conv(f"{name}.up", x, "transposed", 2, 2, "relu6")
        x = a.add(f"{name}.sum", skip, x)
        x = self.blocks(a, name, x)
        return a.squeeze_excite(f"{name}.se", x)

    def run(self, arith_of: Callable[[str], "Int8 | Float"], x: np.ndarray) -> dict:
        """Every stage's output (taps, NHWC) and the head's, each stage run by the arithmetic
        `arith_of(stage)` returns; a tensor crossing from one arithmetic to another is converted
        (quantized with its recorded parameters, or dequantized)."""
        out, prev = {}, None

        def enter(stage, *tensors):
            a = arith_of(stage)
            return a, [a.convert(t, name) for t, name in tensors]

        a, (x,) = enter("stem", (x, "input"))
        out["stem"] = x = self.stem(a, x)
        for s in self.cfg.encoder:
            a, (x,) = enter(s.name, (x, stage_output(self.cfg, prev or "stem")))
            out[s.name] = x = self.encoder(a, s.name, x)
            prev = s.name
        skips = {"d1": "s3", "d2": "s2", "d3": "s1"}
        for s in self.cfg.decoder:
            skip = skips[s.name]
            a, (x, sk) = enter(s.name, (x, stage_output(self.cfg, prev)),
                               (out[skip], stage_output(self.cfg, skip)))
            out[s.name] = x = self.decoder(a, s.name, x, sk)
            prev = s.name
        a, (x,) = enter("head", (x, stage_output(self.cfg, prev)))
        out["head"] = a.head("head", x)
        return out


# --- int8 arithmetic ---------------------------------------------------------------------------
class Int8:
    """The int8 network's arithmetic: `params` holds the int8 file's tensors (see `refpose.quant.
    fileformat`); `ops` is `refpose.quant.reference` or `refpose.quant.fast`."""

    def __init__(self, params: dict, ops):
        self.p, self.ops = params, ops
        self._derived: dict = {}

    def has(self, path: str) -> bool:
        return f"{path}.weight" in self.p

    def act(self, name: str):
        return self.p[f"{name}.y_scale"], self.p[f"{name}.y_zero_point"]

    @staticmethod
    def shape(x: QTensor):
        return x.q.shape

    def convert(self, x, name: str) -> QTensor:
        """A float tensor entering the int8 domain is quantized with the parameters of `name`."""
        if isinstance(x, QTensor):
            return x
        x = np.asarray(x, dtype=np.float32)
        qdq.check_finite(x, "network input" if name == "input" else f"tensor {name}")
        s, z = self.act(name)
        return QTensor(qdq.quantize_linear(x, s, z), s, z)

    def _out(self, name, q) -> QTensor:
        s, z = self.act(name)
        return QTensor(q, s, z)

    def _mult(self, key, make):
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

    def conv(self, path, x: QTensor, kind, k, stride, act):
        w, b, sw = self.p[f"{path}.weight"], self.p[f"{path}.bias"], self.p[f"{path}.weight_scale"]
        sy, zy = self.act(path)
        mult = self._mult(path, lambda: qdq.multiplier(x.scale, sw, divide_by=sy))
        lo, hi = qdq.relu6_bounds(sy, zy) if act == "relu6" else (int(zy), 255) if act == "relu" else (0, 255)
        return QTensor(self.ops.conv(x.q, x.zero, w, b, kind, stride, mult, zy, lo, hi), sy, zy)

    def linear(self, path, x):
        return self.conv(path, x, "conv", 1, 1, None)

    def add(self, name, a: QTensor, b: QTensor):
        return self._out(name, self.ops.add(a.q, a.params, b.q, b.params, self.act(name)))

    def layer_norm(self, path, x: QTensor):
        return self._out(path, self.ops.layer_norm(x.q, x.params, self.p[f"{path}.weight"], self.p[f"{path}.bias"],
                                                   LN_EPS, self.act(path)))

    def attention(self, path, qkv: QTensor, heads, kind, window, patch):
        C = qkv.q.shape[-1] // 3
        d = C // heads
        ss, zs = self.act(f"{path}.scores")
        so, zo = self.act(f"{path}.attn")
        score_mult = self._mult(f"{path}.scores", lambda: qdq.multiplier(qkv.scale, qkv.scale, np.float32(d ** -0.5),
                                                                         divide_by=ss))
        out_mult = self._mult(f"{path}.attn", lambda: qdq.multiplier(SOFTMAX[0], qkv.scale, divide_by=so))
        table = self._mult(f"{path}.table", lambda: exp_table(ss))
        q = self.ops.attention(qkv.q, qkv.zero, heads, kind, window, patch, score_mult, zs, table, out_mult, zo)
        return QTensor(q, so, zo)

    def squeeze_excite(self, path, x: QTensor):
        pooled = self._out(f"{path}.pool", self.ops.mean_pool(x.q, x.params, self.act(f"{path}.pool")))
        pooled = QTensor(pooled.q[:, None, None, :], pooled.scale, pooled.zero)      # (N, 1, 1, C)
        h = self.conv(f"{path}.fc1", pooled, "conv", 1, 1, "relu")
        g = self.conv(f"{path}.fc2", h, "conv", 1, 1, None)
        table = self._mult(f"{path}.table", lambda: sigmoid_table(g.scale, g.zero))
        gates = table[g.q[:, 0, 0, :]]                                              # (N, C), scale 1/255
        sy, zy = self.act(path)
        mult = self._mult(f"{path}.gate", lambda: qdq.multiplier(x.scale, SOFTMAX[0], divide_by=sy))
        return QTensor(self.ops.gate(x.q, x.zero, gates, mult, zy), sy, zy)

    def head(self, path, x: QTensor):
        sw = self.p[f"{path}.weight_scale"]
        out_mult = self._mult(path, lambda: qdq.multiplier(x.scale, sw, divide_by=np.float32(1.0)))
        return self.ops.conv_float(x.q, x.zero, self.p[f"{path}.weight"], self.p[f"{path}.bias"], out_mult)


# --- float arithmetic ----------------------------------------------------------------------------
class Float:
    """The float network through the same walk, in `dtype`, on NumPy reference ops. `weights` maps a
    layer path to its arrays: folded (weight, bias) for a conv unit, linear, SE conv or the head,
    (weight, bias) for a LayerNorm. `observe(name, tensor)`, if given, sees every tensor the int8
    network quantizes; `quant` (a dict of y_scale / y_zero_point entries) converts a QTensor coming
    from an int8 stage."""

    def __init__(self, weights: dict, dtype="float32", observe=None, quant: dict | None = None):
        self.w, self.dtype, self.observe, self.quant = weights, np.dtype(dtype), observe, quant or {}

    def has(self, path: str) -> bool:
        return path in self.w

    @staticmethod
    def shape(x):
        return x.shape

    def _seen(self, name, x):
        if self.observe is not None:
            self.observe(name, x)
        return x

    def convert(self, x, name: str):
        if isinstance(x, QTensor):
            return qdq.dequantize_linear(x.q, x.scale, x.zero).astype(self.dtype)
        x = np.asarray(x, dtype=self.dtype)
        return self._seen(name, x) if name == "input" else x

    def _wb(self, path):
        w, b = self.w[path]
        return w.astype(self.dtype, copy=False), b.astype(self.dtype, copy=False)

    def conv(self, path, x, kind, k, stride, act):
        w, b = self._wb(path)
        op = {"conv": fref.conv2d, "depthwise": fref.depthwise_conv2d, "transposed": fref.conv_transpose2d}[kind]
        y = op(x, w, b, stride)
        if act == "relu6":
            y = np.clip(y, 0, 6)
        elif act == "relu":
            y = np.maximum(y, 0)
        return self._seen(path, y)

    def linear(self, path, x):
        w, b = self._wb(path)
        return self._seen(path, fref.linear(x, w, b))

    def add(self, name, a, b):
        return self._seen(name, a + b)

    def layer_norm(self, path, x):
        w, b = self._wb(path)
        return self._seen(path, fref.layer_norm(x, w, b, LN_EPS))

    def attention(self, path, qkv, heads, kind, window, patch):
        N, H, W, C3 = qkv.shape
        C = C3 // 3
        d = C // heads
        t = partition(qkv, kind, window, patch)                               # (G, T, 3C)
        G, T, _ = t.shape
        t = t.reshape(G, T, 3, heads, d).transpose(2, 0, 3, 1, 4)             # (3, G, heads, T, d)
        scores = self._seen(f"{path}.scores", (t[0] @ t[1].swapaxes(-1, -2)) * self.dtype.type(d ** -0.5))
        out = fref.softmax(scores) @ t[2]                                     # (G, heads, T, d)
        out = out.transpose(0, 2, 1, 3).reshape(G, T, C)
        return self._seen(f"{path}.attn", reverse(out, kind, (N, H, W, C), window, patch))

    def squeeze_excite(self, path, x):
        s = self._seen(f"{path}.pool", x.mean(axis=(1, 2)))                   # (N, C)
        w1, b1 = self._wb(f"{path}.fc1")
        w2, b2 = self._wb(f"{path}.fc2")
        s = self._seen(f"{path}.fc1", fref.relu(fref.linear(s, w1[:, :, 0, 0], b1)))
        s = self._seen(f"{path}.fc2", fref.linear(s, w2[:, :, 0, 0], b2))
        return self._seen(path, x * fref.sigmoid(s)[:, None, None, :])

    def head(self, path, x):
        w, b = self._wb(path)
        return fref.conv2d(x, w, b)


def float_weights(model) -> dict:
    """{path: (weight, bias)} of a float WGNet (BatchNorm folded, as the model bound it), for `Float`."""
    from ..layers import ConvBN, Conv1x1, LayerNorm, Linear, walk

    return {path: (layer.weight, layer.bias) for path, layer in walk(model)
            if isinstance(layer, (ConvBN, Conv1x1, LayerNorm, Linear))}


def check_stages(names) -> tuple[str, ...]:
    """Stage names in network order; ConfigError naming one that is not a stage."""
    names = tuple(names)
    bad = [n for n in names if n not in TAPS]
    if bad:
        raise ConfigError(f"{bad[0]!r} is not a stage; the stages are {', '.join(TAPS)}")
    return tuple(n for n in TAPS if n in names)
