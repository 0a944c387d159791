"""WGNet's layers: small classes whose attribute paths are the weight keys (DESIGN section 3).

A layer is built from shapes alone (so the model knows every key and shape before any
weights exist); `bind` then takes its tensors, folding BatchNorm into the convolution in
the compute dtype. `__call__` names the layer for operation counting and runs `forward`.
All maps are NHWC.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .counting import layer_scope
from .ops import Ops
from .ops.geometry import clamp_window

BN_EPS = 1e-5   # torch.nn.BatchNorm2d default
LN_EPS = 1e-5   # torch.nn.LayerNorm default

Getter = Callable[[str], np.ndarray]   # relative key -> array in the compute dtype


class Layer:
    """Base: children are the attributes that are layers; `path` is the key prefix."""

    path = ""

    def children(self) -> Iterator[tuple[str, "Layer"]]:
        for name, value in vars(self).items():
            if isinstance(value, Layer):
                yield name, value

    def tensor_shapes(self) -> dict[str, tuple]:
        """This layer's own tensors (relative keys), as stored in a weights file."""
        return {}

    def bind(self, get: Getter) -> None:
        """Take this layer's own tensors; children bind themselves."""

    def __call__(self, *args):
        with layer_scope(self.path):
            return self.forward(*args)

    def forward(self, *args):
        raise NotImplementedError


class Sequential(Layer):
    """Numbered children (`stem.0`, `blocks.1`, ...) run in order."""

    def __init__(self, layers: list[Layer]):
        self.layers = list(layers)

    def children(self):
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def __len__(self):
        return len(self.layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _read_only(a: np.ndarray) -> np.ndarray:
    """A weight the layer derived at bind (BatchNorm folded in), read-only like the bound
    tensors, so the fast path can keep what it derives from it (see `weights.from_tensors`)."""
    a.setflags(write=False)
    return a


def walk(layer: Layer, prefix: str = "") -> Iterator[tuple[str, Layer]]:
    """Every layer of a tree with its full key prefix, parents first."""
    yield prefix, layer
    for name, child in layer.children():
        yield from walk(child, f"{prefix}.{name}" if prefix else name)


# --- units -------------------------------------------------------------------------------
class ConvBN(Layer):
    """Conv (bias=False, padding k//2) -> BatchNorm (folded at bind) -> ReLU6 if `act`.

    `kind` is "conv" (dense, groups=1), "depthwise" (groups=cin=cout) or "transposed"
    (ConvTranspose2d with kernel == stride, layout (Cin, Cout, k, k)).
    """

    def __init__(self, ops: Ops, cin: int, cout: int, k: int = 1, stride: int = 1,
                 kind: str = "conv", act: bool = True):
        if kind == "depthwise" and cin != cout:
            raise ValueError("a depthwise conv keeps its channels")
        self.ops, self.cin, self.cout, self.k, self.stride, self.kind, self.act = ops, cin, cout, k, stride, kind, act

    def tensor_shapes(self):
        c, k = self.cout, self.k
        w = {"conv": (c, self.cin, k, k), "depthwise": (c, 1, k, k), "transposed": (self.cin, c, k, k)}[self.kind]
        return {"conv.weight": w, "bn.weight": (c,), "bn.bias": (c,), "bn.running_mean": (c,), "bn.running_var": (c,)}

    def bind(self, get):
        scale = get("bn.weight") / np.sqrt(get("bn.running_var") + BN_EPS)   # per output channel
        w = get("conv.weight")
        out_axis = 1 if self.kind == "transposed" else 0
        shape = [1, 1, 1, 1]
        shape[out_axis] = -1
        self.weight = _read_only(np.ascontiguousarray(w * scale.reshape(shape)))
        self.bias = _read_only(get("bn.bias") - get("bn.running_mean") * scale)

    def forward(self, x, residual=None):
        """The conv of x; `residual` (dense convs only) is added to its output, in the same pass
        on the fast path."""
        if self.kind == "conv":
            return self.ops.conv(x, self.weight, self.bias, self.stride, self.act, residual=residual)
        if residual is not None:
            raise ValueError(f"a {self.kind} conv takes no residual")
        op = {"depthwise": self.ops.depthwise_conv, "transposed": self.ops.conv_transpose}[self.kind]
        return op(x, self.weight, self.bias, self.stride, self.act)


class Linear(Layer):
    """torch.nn.Linear: weight (out, in), bias (out,)."""

    def __init__(self, ops: Ops, cin: int, cout: int):
        self.ops, self.cin, self.cout = ops, cin, cout

    def tensor_shapes(self):
        return {"weight": (self.cout, self.cin), "bias": (self.cout,)}

    def bind(self, get):
        self.weight, self.bias = get("weight"), get("bias")

    def forward(self, x, residual=None):
        return self.ops.linear(x, self.weight, self.bias, residual)


class LayerNorm(Layer):
    def __init__(self, ops: Ops, c: int):
        self.ops, self.c = ops, c

    def tensor_shapes(self):
        return {"weight": (self.c,), "bias": (self.c,)}

    def bind(self, get):
        self.weight, self.bias = get("weight"), get("bias")

    def forward(self, x):
        return self.ops.layer_norm(x, self.weight, self.bias, LN_EPS)


class Conv1x1(Layer):
    """A 1x1 Conv2d with bias (the head and the SE convs): weight (out, in, 1, 1)."""

    def __init__(self, ops: Ops, cin: int, cout: int):
        self.ops, self.cin, self.cout = ops, cin, cout

    def tensor_shapes(self):
        return {"weight": (self.cout, self.cin, 1, 1), "bias": (self.cout,)}

    def bind(self, get):
        self.weight, self.bias = get("weight"), get("bias")

    def forward(self, x):
        return self.ops.conv(x, self.weight, self.bias)


# --- blocks ------------------------------------------------------------------------------
class DWSep(Layer):
    """Depthwise-separable conv of the stem (MobileNet): dw k x k stride s -> pw 1x1, both ReLU6."""

    def __init__(self, ops: Ops, cin: int, cout: int, k: int = 5, stride: int = 2):
        self.dw = ConvBN(ops, cin, cin, k, stride, "depthwise")
        self.pw = ConvBN(ops, cin, cout, 1)

    def forward(self, x):
        return self.pw(self.dw(x))


class InvertedResidual(Layer):
    """MobileNetV2 inverted residual (Sandler et al. 2018): 1x1 expand -> 3x3 dw -> 1x1 linear project."""

    def __init__(self, ops: Ops, cin: int, cout: int, stride: int, expand: int):
        hidden = cin * expand
        if expand != 1:
            self.expand = ConvBN(ops, cin, hidden, 1)
        self.dw = ConvBN(ops, hidden, hidden, 3, stride, "depthwise")
        self.project = ConvBN(ops, hidden, cout, 1, act=False)
        self.ops, self.residual = ops, stride == 1 and cin == cout

    def forward(self, x):
        y = self.expand(x) if hasattr(self, "expand") else x
        return self.project(self.dw(y), x if self.residual else None)


class Attention(Layer):
    """`x + Proj(MHSA(Group(LN(x))))` for kind "window" or "global" (paper section 3.2).

    The qkv and output projections act per token and only the attention itself sees the
    groups; `Ops.attention_block` runs the four steps (one kernel over the groups on the fast
    path). The window is clamped to the map at run time.
    """

    def __init__(self, ops: Ops, c: int, kind: str, window: tuple[int, int], patch: tuple[int, int], head_dim: int):
        self.norm = LayerNorm(ops, c)
        self.qkv = Linear(ops, c, 3 * c)
        self.proj = Linear(ops, c, c)
        self.ops, self.kind, self.window, self.patch, self.heads = ops, kind, window, patch, c // head_dim

    def forward(self, x):
        N, H, W, C = x.shape
        window = clamp_window(self.window, H, W)
        return self.ops.attention_block(x, self.norm, self.qkv, self.proj, LN_EPS, self.heads, self.kind,
                                        window, self.patch)


class WNet(Layer):
    """WNet block (paper Fig. 2): window attention, global attention, inverted-residual FFN."""

    def __init__(self, ops: Ops, c: int, window_attn: bool, global_attn: bool,
                 window: tuple[int, int], patch: tuple[int, int], head_dim: int, ffn_expand: int):
        if window_attn:
            self.win = Attention(ops, c, "window", window, patch, head_dim)
        if global_attn:
            self.glob = Attention(ops, c, "global", window, patch, head_dim)
        self.ffn = InvertedResidual(ops, c, c, 1, ffn_expand)

    def forward(self, x):
        if hasattr(self, "win"):
            x = self.win(x)
        if hasattr(self, "glob"):
            x = self.glob(x)
        return self.ffn(x)


class SqueezeExcite(Layer):
    """Channel attention of the decoder stages (Hu et al. 2018), reduction r."""

    def __init__(self, ops: Ops, c: int, r: int):
        self.fc1 = Conv1x1(ops, c, c // r)
        self.fc2 = Conv1x1(ops, c // r, c)
        self.ops = ops

    def forward(self, x):
        return self.ops.squeeze_excite(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)


def _blocks(ops, stage, cfg) -> Sequential:
    return Sequential([WNet(ops, stage.channels, stage.window_attn, stage.global_attn, stage.window,
                            stage.patch, cfg.head_dim, cfg.ffn_expand) for _ in range(stage.depth)])


class EncoderStage(Layer):
    """s1..s4: an inverted residual (stride 1 or 2, expansion 6), then WNet blocks."""

    def __init__(self, ops: Ops, cin: int, stage, cfg):
        self.ir = InvertedResidual(ops, cin, stage.channels, stage.stride, cfg.ir_expand)
        self.blocks = _blocks(ops, stage, cfg)

    def forward(self, x):
        return self.blocks(self.ir(x))


class DecoderStage(Layer):
    """d1..d3: 2x transposed conv, + skip from the encoder, WNet blocks, SE."""

    def __init__(self, ops: Ops, cin: int, skip_channels: int, stage, cfg):
        C = stage.channels
        self.up = ConvBN(ops, cin, C, 2, 2, "transposed")
        if skip_channels != C:
            self.skip = ConvBN(ops, skip_channels, C, 1, act=False)
        self.blocks = _blocks(ops, stage, cfg)
        self.se = SqueezeExcite(ops, C, cfg.se_reduction)
        self.ops = ops

    def forward(self, x, skip):
        if hasattr(self, "skip"):
            skip = self.skip(skip)
        x = self.ops.add(skip, self.up(x))
        return self.se(self.blocks(x))
