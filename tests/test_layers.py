"""Layers (refpose/layers.py) against the block definitions of DESIGN section 1.

Each layer is bound to random tensors and compared with the same block composed here from
the reference ops (tested against naive loops in test_ops.py), with BatchNorm applied
unfolded, as PyTorch's eval mode does: (z - mean) / sqrt(var + 1e-5) * gamma + beta.
"""
import numpy as np
import pytest

from refpose.config import StageConfig, get_config
from refpose.layers import Attention, ConvBN, DecoderStage, DWSep, InvertedResidual, SqueezeExcite, WNet, walk
from refpose.ops import Ops, reference as ref

OPS = Ops("reference")
# float64 throughout: the layer folds BN into the conv weights, the composition here applies
# it after; the two orders differ by a few round-offs of values O(1-10), far below 1e-10.
TOL = 1e-10


def random_tensors(layer, seed=0):
    """Random float64 tensors for every key of a layer tree (running_var kept positive)."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, l in walk(layer):
        for k, shape in l.tensor_shapes().items():
            key = f"{path}.{k}" if path else k
            if k.endswith("running_var"):
                out[key] = rng.uniform(0.5, 2.0, shape)
            else:
                out[key] = rng.normal(0.0, 0.3, shape)
    return out


def bind(layer, tensors):
    for path, l in walk(layer):
        prefix = f"{path}." if path else ""
        l.bind(lambda k, p=prefix: tensors[p + k])
    return layer


def key(unit, k):
    return f"{unit}.{k}" if unit else k


def bn(z, t, unit):
    """BatchNorm2d in eval mode, eps 1e-5, over the last (channel) axis."""
    g, b = t[key(unit, "bn.weight")], t[key(unit, "bn.bias")]
    m, v = t[key(unit, "bn.running_mean")], t[key(unit, "bn.running_var")]
    return (z - m) / np.sqrt(v + 1e-5) * g + b


def conv_bn(x, t, unit, kind="conv", stride=1, act=True):
    """ConvBN of DESIGN section 1, unfolded: conv (no bias) -> BN -> ReLU6 if act."""
    w = t[key(unit, "conv.weight")]
    z = {"conv": ref.conv2d, "depthwise": ref.depthwise_conv2d, "transposed": ref.conv_transpose2d}[kind](
        x, w, None, stride)
    z = bn(z, t, unit)
    return np.clip(z, 0, 6) if act else z


def inverted_residual(x, t, unit, stride, expand, residual):
    """MobileNetV2 IR: 1x1 expand (ReLU6; absent when e = 1) -> 3x3 dw (ReLU6) -> 1x1 project (linear)."""
    y = conv_bn(x, t, key(unit, "expand")) if expand != 1 else x
    y = conv_bn(y, t, key(unit, "dw"), "depthwise", stride)
    y = conv_bn(y, t, key(unit, "project"), act=False)
    return x + y if residual else y


def attention_branch(x, t, unit, kind, window, patch, heads):
    """x + Proj(MHSA(Group(LN(x)))), DESIGN section 1, with the window given already clamped."""
    y = ref.layer_norm(x, t[key(unit, "norm.weight")], t[key(unit, "norm.bias")], 1e-5)
    qkv = ref.linear(y, t[key(unit, "qkv.weight")], t[key(unit, "qkv.bias")])
    y = ref.grouped_attention(qkv, heads, kind, window, patch)
    return x + ref.linear(y, t[key(unit, "proj.weight")], t[key(unit, "proj.bias")])


def rand_map(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


# --- ConvBN ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, cin, cout, k, stride, act", [
    ("conv", 4, 6, 1, 1, True), ("conv", 4, 6, 1, 1, False), ("depthwise", 5, 5, 3, 2, True),
    ("depthwise", 5, 5, 5, 1, True), ("transposed", 6, 4, 2, 2, True)])
def test_conv_bn_folds_batchnorm_exactly(kind, cin, cout, k, stride, act):
    layer = ConvBN(OPS, cin, cout, k, stride, kind, act)
    t = random_tensors(layer)
    bind(layer, t)
    x = rand_map((2, 6, 4, cin)) * 3
    np.testing.assert_allclose(layer(x), conv_bn(x, t, "", kind, stride, act), rtol=TOL, atol=TOL)


def test_conv_bn_layouts_are_pytorchs():
    # DESIGN section 3: Conv2d (Cout, Cin/groups, k, k), ConvTranspose2d (Cin, Cout, k, k)
    assert ConvBN(OPS, 4, 6, 1).tensor_shapes()["conv.weight"] == (6, 4, 1, 1)
    assert ConvBN(OPS, 5, 5, 3, 2, "depthwise").tensor_shapes()["conv.weight"] == (5, 1, 3, 3)
    assert ConvBN(OPS, 6, 4, 2, 2, "transposed").tensor_shapes()["conv.weight"] == (6, 4, 2, 2)


# --- inverted residual -----------------------------------------------------------------------
# (cin, cout, stride, expand, residual by DESIGN: iff stride 1 and cin == cout)
IR_CASES = [(8, 8, 1, 2, True), (8, 8, 1, 1, True), (8, 8, 2, 2, False), (8, 16, 1, 6, False),
            (16, 8, 2, 6, False), (8, 16, 1, 1, False)]


@pytest.mark.parametrize("cin, cout, stride, expand, residual", IR_CASES)
def test_inverted_residual_matches_definition(cin, cout, stride, expand, residual):
    layer = InvertedResidual(OPS, cin, cout, stride, expand)
    t = random_tensors(layer)
    bind(layer, t)
    x = rand_map((2, 6, 4, cin))
    y = layer(x)
    assert y.shape == (2, 6 // stride, 4 // stride, cout)
    np.testing.assert_allclose(y, inverted_residual(x, t, "", stride, expand, residual), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("cin, cout, stride, expand, residual", IR_CASES)
def test_inverted_residual_has_a_residual_iff_stride_1_and_same_channels(cin, cout, stride, expand, residual):
    # with the branch's last BN zeroed the branch is exactly 0: what is left is the skip
    layer = InvertedResidual(OPS, cin, cout, stride, expand)
    t = random_tensors(layer)
    t["project.bn.weight"][:] = 0
    t["project.bn.bias"][:] = 0
    bind(layer, t)
    x = rand_map((1, 6, 4, cin))
    y = layer(x)
    if residual:
        np.testing.assert_array_equal(y, x)
    else:
        np.testing.assert_array_equal(y, np.zeros((1, 6 // stride, 4 // stride, cout)))


def test_inverted_residual_expand_is_omitted_when_e_is_1():
    keys = lambda layer: {f"{p}.{k}" if p else k for p, l in walk(layer) for k in l.tensor_shapes()}
    assert not any(k.startswith("expand.") for k in keys(InvertedResidual(OPS, 8, 8, 1, 1)))
    shapes = {f"{p}.{k}": s for p, l in walk(InvertedResidual(OPS, 8, 12, 2, 6)) for k, s in l.tensor_shapes().items()}
    assert shapes["expand.conv.weight"] == (48, 8, 1, 1)
    assert shapes["dw.conv.weight"] == (48, 1, 3, 3)
    assert shapes["project.conv.weight"] == (12, 48, 1, 1)


# --- attention -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, window, patch", [("window", (8, 6), (4, 3)), ("global", (8, 6), (4, 3)),
                                                 ("global", (8, 6), (2, 3))])
def test_attention_matches_definition(kind, window, patch):
    # C = 64: two heads of 32 (DESIGN: heads = C / 32)
    layer = Attention(OPS, 64, kind, window, patch, head_dim=32)
    assert layer.heads == 2
    t = random_tensors(layer)
    bind(layer, t)
    x = rand_map((2, 16, 12, 64))
    want = attention_branch(x, t, "", kind, window, patch, heads=2)
    np.testing.assert_allclose(layer(x), want, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("map_hw, window, clamped", [((4, 3), (8, 6), (4, 3)), ((4, 12), (8, 6), (4, 6)),
                                                     ((16, 3), (8, 6), (8, 3))])
def test_attention_window_is_clamped_to_the_map(map_hw, window, clamped):
    # DESIGN section 1: wh = min(window_h, H), ww = min(window_w, W)
    H, W = map_hw
    layer = Attention(OPS, 32, "window", window, (1, 1), head_dim=32)
    t = random_tensors(layer)
    bind(layer, t)
    x = rand_map((2, H, W, 32))
    want = attention_branch(x, t, "", "window", clamped, (1, 1), heads=1)
    np.testing.assert_allclose(layer(x), want, rtol=TOL, atol=TOL)


def test_global_attention_on_a_map_smaller_than_the_window_is_whole_map_attention():
    # a 4x3 map with window 8x6 clamped to 4x3 and 4x3 patches: one global group holding the
    # whole map, which is exactly window attention with the window = the map
    glob = Attention(OPS, 32, "global", (8, 6), (4, 3), head_dim=32)
    win = Attention(OPS, 32, "window", (4, 3), (4, 3), head_dim=32)
    t = random_tensors(glob)
    bind(glob, t)
    bind(win, t)
    x = rand_map((2, 4, 3, 32))
    np.testing.assert_allclose(glob(x), win(x), rtol=TOL, atol=TOL)


# --- WNet ------------------------------------------------------------------------------------
def wnet_keys(block):
    return {f"{p}.{k}" if p else k for p, l in walk(block) for k in l.tensor_shapes()}


def test_wnet_keys_are_the_design_names():
    cbn = lambda u: {f"{u}.conv.weight", f"{u}.bn.weight", f"{u}.bn.bias", f"{u}.bn.running_mean", f"{u}.bn.running_var"}
    attn = lambda u: {f"{u}.{p}.{w}" for p in ("norm", "qkv", "proj") for w in ("weight", "bias")}
    block = WNet(OPS, 64, True, True, (8, 6), (4, 3), 32, 2)
    assert wnet_keys(block) == attn("win") | attn("glob") | cbn("ffn.expand") | cbn("ffn.dw") | cbn("ffn.project")
    assert wnet_keys(WNet(OPS, 64, True, False, (8, 6), (4, 3), 32, 2)) == \
        attn("win") | cbn("ffn.expand") | cbn("ffn.dw") | cbn("ffn.project")
    assert wnet_keys(WNet(OPS, 64, False, False, (8, 6), (4, 3), 32, 2)) == \
        cbn("ffn.expand") | cbn("ffn.dw") | cbn("ffn.project")


def test_wnet_matches_definition():
    # x = x + WinAttn(x); x = x + GlobAttn(x); x = IR(C, C, 1, e=2)(x) with its residual
    block = WNet(OPS, 64, True, True, (8, 6), (4, 3), 32, 2)
    t = random_tensors(block)
    bind(block, t)
    x = rand_map((2, 16, 12, 64))
    y = attention_branch(x, t, "win", "window", (8, 6), (4, 3), 2)
    y = attention_branch(y, t, "glob", "global", (8, 6), (4, 3), 2)
    y = inverted_residual(y, t, "ffn", 1, 2, True)
    np.testing.assert_allclose(block(x), y, rtol=TOL, atol=TOL)


def test_wnet_with_zero_projections_is_the_identity():
    # every sub-block is x + f(x); zero attention output projections and a zero FFN project
    # (conv and BN) make every f(x) exactly 0
    block = WNet(OPS, 64, True, True, (8, 6), (4, 3), 32, 2)
    t = random_tensors(block)
    x = rand_map((2, 16, 12, 64))
    assert not np.allclose(bind(block, t)(x), x)        # random weights: not the identity
    for unit in ("win", "glob"):
        t[f"{unit}.proj.weight"][:] = 0
        t[f"{unit}.proj.bias"][:] = 0
    for k in ("conv.weight", "bn.weight", "bn.bias"):
        t[f"ffn.project.{k}"][:] = 0
    np.testing.assert_array_equal(bind(block, t)(x), x)


# --- squeeze-excite, stem, decoder -----------------------------------------------------------
def test_squeeze_excite_layer_reduces_by_r():
    layer = SqueezeExcite(OPS, 64, 4)
    t = random_tensors(layer)
    assert t["fc1.weight"].shape == (16, 64, 1, 1) and t["fc2.weight"].shape == (64, 16, 1, 1)
    bind(layer, t)
    x = rand_map((2, 4, 3, 64))
    want = ref.squeeze_excite(x, t["fc1.weight"], t["fc1.bias"], t["fc2.weight"], t["fc2.bias"])
    np.testing.assert_array_equal(layer(x), want)


def test_dwsep_matches_definition():
    # DWSep(cin, cout, k=5, s=2): ConvBN depthwise k x k stride s -> ConvBN 1x1, both with ReLU6
    layer = DWSep(OPS, 3, 16, 5, 2)
    t = random_tensors(layer)
    bind(layer, t)
    x = rand_map((2, 16, 12, 3))
    want = conv_bn(conv_bn(x, t, "dw", "depthwise", 2), t, "pw")
    y = layer(x)
    assert y.shape == (2, 8, 6, 16)
    np.testing.assert_allclose(y, want, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("skip_channels", [32, 64])
def test_decoder_stage_matches_definition(skip_channels):
    # up (ConvTranspose 2x2 s2 -> BN -> ReLU6) + skip (ConvBN 1x1 without activation only when
    # the channels differ) -> WNet blocks -> SE
    cfg = get_config("tiny")
    stage = StageConfig("d2", 32, 1, True, True, (8, 6), (4, 3))
    layer = DecoderStage(OPS, 64, skip_channels, stage, cfg)
    t = random_tensors(layer)
    assert ("skip.conv.weight" in t) == (skip_channels != 32)
    bind(layer, t)
    x, skip = rand_map((2, 8, 6, 64), 2), rand_map((2, 16, 12, skip_channels), 3)
    s = conv_bn(skip, t, "skip", act=False) if skip_channels != 32 else skip
    y = conv_bn(x, t, "up", "transposed", 2) + s
    y = attention_branch(y, t, "blocks.0.win", "window", (8, 6), (4, 3), 1)
    y = attention_branch(y, t, "blocks.0.glob", "global", (8, 6), (4, 3), 1)
    y = inverted_residual(y, t, "blocks.0.ffn", 1, 2, True)
    y = ref.squeeze_excite(y, t["se.fc1.weight"], t["se.fc1.bias"], t["se.fc2.weight"], t["se.fc2.bias"])
    np.testing.assert_allclose(layer(x, skip), y, rtol=TOL, atol=TOL)
