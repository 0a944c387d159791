"""QDQ ONNX export of an int8 file (`refpose export-onnx W.int8.safetensors m.int8.onnx`).

The graph is written op by op from the int8 network's walk (`refpose.quant.network.Walk`), in the
QDQ form ONNX Runtime's static quantization produces: every activation tensor the int8 network
quantizes is a QuantizeLinear -> DequantizeLinear pair with its scale and zero point; conv and
linear weights are int8 initializers behind a per-channel DequantizeLinear, biases int32 behind a
DequantizeLinear of scale s_x * s_w; the ops between are the float ops (Conv, ConvTranspose,
LayerNormalization, MatMul, Softmax, Sigmoid, Add, Mul). A runtime may fuse the pairs into
integer kernels (QLinearConv, QLinearMatMul) or run them as written; either way it departs from
refpose's exact integers only where a value lies within float rounding of a step boundary
(see `refpose.quant.report`, tolerance in steps). Linears are 1x1 convolutions on the NCHW map.

The interface is `refpose export-onnx`'s: input `input` (N, 3, H, W) float32, dynamic N; output
`heatmaps`; the stage outputs (dequantized) named stem, s1..s4, d1..d3 (graph outputs with taps).
A stage kept in float (`float_stages`) is exported as float ops between its boundary quantizations.
"""
from __future__ import annotations

import numpy as np

from ..config import TAPS
from ..errors import BackendError
from ..fileio import write_atomic
from . import qdq
from .network import Walk, stage_output

INPUT_NAME, OUTPUT_NAME = "input", "heatmaps"
META_CONFIG, META_TAPS, META_INT8 = "refpose.config", "refpose.taps", "refpose.int8"
OPSET = 17


class _Graph:
    """Nodes and initializers, with names made unique."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self.count = [], [], {}

    def name(self, base: str) -> str:
        n = self.count.get(base, 0)
        self.count[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def const(self, base: str, value) -> str:
        name = self.name(base)
        self.inits.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs, base: str, output: str | None = None, **attrs) -> str:
        out = output or self.name(base)
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], name=self.name(f"{base}/{op_type}"),
                                                **attrs))
        return out


class _Emit:
    """An arithmetic for `Walk` that writes ONNX nodes: tensors are (name, (C, H, W)) of float NCHW
    maps; `quantized` False writes a float stage (its weights float, no pairs inside)."""

    def __init__(self, g: _Graph, p: dict, quantized: bool):
        self.g, self.p, self.quantized = g, p, quantized

    def has(self, path):
        return f"{path}.weight" in self.p

    @staticmethod
    def shape(x):
        C, H, W = x[1]
        return (None, H, W, C)

    def qdq(self, name: str, x: str) -> str:
        """x through QuantizeLinear / DequantizeLinear with activation `name`'s parameters."""
        s = self.g.const(f"{name}.y_scale", np.float32(self.p[f"{name}.y_scale"]))
        z = self.g.const(f"{name}.y_zero_point", np.uint8(self.p[f"{name}.y_zero_point"]))
        q = self.g.op("QuantizeLinear", [x, s, z], f"{name}/q")
        return self.g.op("DequantizeLinear", [q, s, z], f"{name}/dq")

    def fixed(self, base: str, x: str) -> str:
        """x through a pair with the fixed scale 1/255, zero point 0 (softmax, sigmoid)."""
        s = self.g.const(f"{base}.y_scale", qdq.SOFTMAX_SCALE)
        z = self.g.const(f"{base}.y_zero_point", np.uint8(0))
        return self.g.op("DequantizeLinear", [self.g.op("QuantizeLinear", [x, s, z], f"{base}/q"), s, z], f"{base}/dq")

    def _out(self, name, y):
        return self.qdq(name, y) if self.quantized else y

    def convert(self, x, name):
        if name == "input":
            return (self.qdq("input", x[0]) if self.quantized else x[0]), x[1]
        return x

    def _weights(self, path, x, shape, axis):
        """(weight, bias) tensor names: DequantizeLinear of the int8 / int32 initializers, or floats."""
        w, b = self.p[f"{path}.weight"], self.p[f"{path}.bias"]
        w = w.reshape(shape)
        if not self.quantized or w.dtype.kind == "f":
            return self.g.const(f"{path}.weight", w.astype(np.float32)), self.g.const(f"{path}.bias", b.astype(np.float32))
        sw = self.p[f"{path}.weight_scale"]
        wq = self.g.op("DequantizeLinear", [self.g.const(f"{path}.weight_q", w), self.g.const(f"{path}.weight_scale", sw),
                                            self.g.const(f"{path}.weight_zero", np.zeros(len(sw), np.int8))],
                       f"{path}/weight", axis=axis)
        sx = self.p[f"{self._input_of[path]}.y_scale"] if hasattr(self, "_input_of") else None
        sb = (np.float32(sx) * sw).astype(np.float32)
        bq = self.g.op("DequantizeLinear", [self.g.const(f"{path}.bias_q", b), self.g.const(f"{path}.bias_scale", sb),
                                            self.g.const(f"{path}.bias_zero", np.zeros(len(sb), np.int32))],
                       f"{path}/bias", axis=0)
        return wq, bq

    def conv(self, path, x, kind, k, stride, act):
        name, (C, H, W) = x
        w = self.p[f"{path}.weight"]
        if kind == "transposed":
            Cout = w.shape[1]
            wt, bt = self._weights(path, x, w.shape, 1)
            y = self.g.op("ConvTranspose", [name, wt, bt], path, kernel_shape=[k, k], strides=[k, k])
            H, W = H * k, W * k
        else:
            Cout = w.shape[0]
            shape = w.shape if w.ndim == 4 else w.shape + (1, 1)
            wt, bt = self._weights(path, x, shape, 0)
            pad = k // 2
            y = self.g.op("Conv", [name, wt, bt], path, kernel_shape=[k, k], strides=[stride, stride],
                          pads=[pad] * 4, group=C if kind == "depthwise" else 1)
            H, W = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
        if act == "relu6":
            y = self.g.op("Clip", [y, self.g.const("zero", np.float32(0)), self.g.const("six", np.float32(6))], path)
        elif act == "relu":
            y = self.g.op("Relu", [y], path)
        return self._out(path, y), (Cout, H, W)

    def linear(self, path, x):
        return self.conv(path, x, "conv", 1, 1, None)

    def add(self, name, a, b):
        return self._out(name, self.g.op("Add", [a[0], b[0]], name)), b[1]

    def layer_norm(self, path, x):
        name, shape = x
        t = self.g.op("Transpose", [name], path, perm=[0, 2, 3, 1])
        t = self.g.op("LayerNormalization", [t, self.g.const(f"{path}.weight", self.p[f"{path}.weight"]),
                                             self.g.const(f"{path}.bias", self.p[f"{path}.bias"])],
                      path, axis=-1, epsilon=1e-5)
        return self._out(path, self.g.op("Transpose", [t], path, perm=[0, 3, 1, 2])), shape

    def attention(self, path, qkv, heads, kind, window, patch):
        name, (C3, H, W) = qkv
        C = C3 // 3
        d = C // heads
        wh, ww = window
        ph, pw = patch
        nh, nw = H // wh, W // ww
        g = self.g
        if kind == "window":    # h = (a, i), w = (b, j): group (n, a, b), token (i, j)
            dims = [0, 3, heads, d, nh, wh, nw, ww]
            perm = [1, 0, 4, 6, 2, 5, 7, 3]          # (3, N, nh, nw, heads, wh, ww, d)
            T = wh * ww
        else:                   # h = (a, i, p), w = (b, j, q): group (n, i, j), token (a, p, b, q)
            gh, gw = wh // ph, ww // pw
            dims = [0, 3, heads, d, nh, gh, ph, nw, gw, pw]
            perm = [1, 0, 5, 8, 2, 4, 6, 7, 9, 3]    # (3, N, gh, gw, heads, nh, ph, nw, pw, d)
            T = nh * ph * nw * pw
        t = g.op("Reshape", [name, g.const("shape", np.array(dims, np.int64))], path)
        t = g.op("Transpose", [t], path, perm=perm)
        t = g.op("Reshape", [t, g.const("shape", np.array([3, -1, heads, T, d], np.int64))], path)   # (3, G, h, T, d)
        q, k, v = (g.op("Gather", [t, g.const("index", np.int64(i))], f"{path}/{n}", axis=0)
                   for i, n in enumerate("qkv"))
        s = g.op("MatMul", [q, g.op("Transpose", [k], path, perm=[0, 1, 3, 2])], f"{path}/scores")
        s = g.op("Mul", [s, g.const("scale", np.float32(d ** -0.5))], f"{path}/scores")
        s = self._out(f"{path}.scores", s)
        p = g.op("Softmax", [s], f"{path}/softmax", axis=-1)
        if self.quantized:
            p = self.fixed(f"{path}.softmax", p)
        o = g.op("MatMul", [p, v], f"{path}/attn")                   # (G, heads, T, d)
        o = self._out(f"{path}.attn", o)
        if kind == "window":
            back_dims, back = [-1, nh, nw, heads, wh, ww, d], [0, 3, 6, 1, 4, 2, 5]    # (N, heads, d, nh, wh, nw, ww)
        else:
            back_dims = [-1, gh, gw, heads, nh, ph, nw, pw, d]
            back = [0, 3, 8, 4, 1, 5, 6, 2, 7]       # (N, heads, d, nh, gh, ph, nw, gw, pw)
        o = g.op("Reshape", [o, g.const("shape", np.array(back_dims, np.int64))], path)
        o = g.op("Transpose", [o], path, perm=back)
        o = g.op("Reshape", [o, g.const("shape", np.array([0, C, H, W], np.int64))], path)
        return o, (C, H, W)

    def squeeze_excite(self, path, x):
        name, shape = x
        s = self._out(f"{path}.pool", self.g.op("GlobalAveragePool", [name], f"{path}/pool"))
        h = self.conv(f"{path}.fc1", (s, (shape[0], 1, 1)), "conv", 1, 1, "relu")
        gt = self.conv(f"{path}.fc2", h, "conv", 1, 1, None)
        gate = self.g.op("Sigmoid", [gt[0]], f"{path}/gate")
        if self.quantized:
            gate = self.fixed(f"{path}.gate", gate)
        return self._out(path, self.g.op("Mul", [name, gate], path)), shape

    def head(self, path, x):
        name, (C, H, W) = x
        w = self.p[f"{path}.weight"]
        wt, bt = self._weights(path, x, w.shape, 0)
        return self.g.op("Conv", [name, wt, bt], path, output=OUTPUT_NAME, kernel_shape=[1, 1]), (w.shape[0], H, W)


def export_int8(weights, out_path, taps: bool = False, opset: int = OPSET):
    """`refpose export-onnx` of an int8 file: checked as `refpose.load` checks it, then `export_qdq`."""
    from ..fileio import check_output_path
    from ..weights import read_weights
    from .fileformat import int8_model

    wf = read_weights(weights)
    check_output_path(out_path, [wf.path])     # before the export, not after it
    model = int8_model(wf.tensors, wf.meta, wf.config_for(None), wf.path, impl="reference")
    export_qdq(model.tensors, model.config, model.float_stages, out_path, taps, opset)
    return model.config


def export_qdq(tensors: dict, config, float_stages, out_path, taps: bool = False, opset: int = OPSET) -> None:
    """Write the QDQ ONNX model of an int8 file's tensors (checked by `int8_model` before)."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        raise BackendError("ONNX export needs onnx: pip install 'refpose[onnx]'") from None
    if opset < 13:
        raise BackendError("a QDQ model with per-channel weights needs opset 13 or later")
    from .quantize import _unit_inputs

    cfg = config
    g = _Graph()
    quant, flt = _Emit(g, tensors, True), _Emit(g, tensors, False)
    quant._input_of = flt._input_of = _unit_inputs(cfg)
    H, W = cfg.input_size
    walk = Walk(cfg)
    stage_names = {}

    def arith_of(stage):
        a = flt if stage in float_stages else quant
        # the stage's boundary tensors are quantized whichever side they are on
        return _Boundary(a, float_stages)

    out = walk.run(arith_of, (INPUT_NAME, (3, H, W)))
    for stage in TAPS[:-1]:
        stage_names[stage] = g.op("Identity", [out[stage][0]], stage, output=stage)
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, H, W])]
    oh, ow = cfg.output_size()
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", cfg.num_keypoints, oh, ow])]
    if taps:
        from ..model import tap_shapes

        shapes = tap_shapes(cfg)
        outputs += [helper.make_tensor_value_info(s, TensorProto.FLOAT, ["batch"] + list(shapes[s][1:]))
                    for s in TAPS[:-1]]
    graph = helper.make_graph(g.nodes, f"{cfg.name}-int8", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="refpose")
    model.ir_version = 8
    for key, value in ((META_CONFIG, cfg.to_json()), (META_TAPS, ",".join(TAPS[:-1]) if taps else ""),
                       (META_INT8, "qdq")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    write_atomic(out_path, model.SerializeToString())


class _Boundary:
    """A stage's arithmetic whose `convert` quantizes a float tensor entering a quantized stage
    (and passes tensors on otherwise): the float network's boundaries are where an int8 stage reads."""

    def __init__(self, a: _Emit, float_stages):
        self.a, self.float_stages = a, float_stages

    def __getattr__(self, item):
        return getattr(self.a, item)

    def convert(self, x, name):
        if name == "input":
            return self.a.convert(x, name)
        if self.a.quantized and name.split(".")[0] in self.float_stages:     # from a float stage
            return self.a.qdq(name, x[0]), x[1]
        return x


__all__ = ["export_qdq", "stage_output"]
