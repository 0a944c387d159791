"""Operation counting (refpose/counting.py, DESIGN section 2) and the reference sizes of
DESIGN section 1.

MACs are what the ops report while they run; the expected values are DESIGN's figures or
worked out by hand from operand shapes (one MAC per multiply-accumulate, as in the paper's
Eq. (1) and in fvcore). Elementwise work is tallied apart and never reaches `macs`.
"""
import functools

import numpy as np
import pytest

import refpose
from refpose import count_ops
from refpose.counting import MAC_KINDS, report
from refpose.layers import Linear
from refpose.ops import Ops

OPS = Ops("reference")

# DESIGN section 1, "Reference sizes": params, MACs at 1x3x256x192
DESIGN_SIZES = {
    "wgnet": (5_719_154, 3_590_865_920),
    "wgnet-a": (4_850_930, 2_438_349_824),
    "wgnet-b": (4_059_890, 2_503_230_464),
    "wgnet-c": (3_191_666, 1_350_714_368),
}


def rand(*shape):
    return np.random.default_rng(0).standard_normal(shape)


# --- the reference sizes --------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def counted(name):
    """(params, counter) of one forward of a named config at 1x3x256x192 (~1 s each on an idle
    core: full-size configs are marked slow, as setup.cfg defines the marker)."""
    model = refpose.build(name, seed=0, impl="reference")
    with count_ops() as c:
        model(np.zeros((1, 3, 256, 192), np.float32))
    return model.num_params, c


@pytest.mark.parametrize("name", list(DESIGN_SIZES))
def test_params_equal_design(name):
    assert refpose.WGNet(name, impl="reference").num_params == DESIGN_SIZES[name][0]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DESIGN_SIZES))
def test_params_and_macs_equal_design(name):
    params, c = counted(name)
    assert (params, c.macs) == DESIGN_SIZES[name]


@pytest.mark.parametrize("name", list(DESIGN_SIZES))
def test_params_are_the_trainable_tensors_of_the_weights(name):
    # a second path to the same number: the seeded weights, BN running statistics excluded
    tensors = refpose.init_weights(name, seed=0)
    n = sum(a.size for k, a in tensors.items() if not k.endswith(("running_mean", "running_var")))
    assert n == DESIGN_SIZES[name][0]


def test_tiny_stem_and_head_macs_by_hand():
    # tiny at 128x96: stem.0 dw 5x5 s2 on 3 ch -> 64x48, pw 3 -> 8; stem.1 dw on 8 ch -> 32x24,
    # pw 8 -> 16; head 1x1 32 -> 17 on 32x24
    model = refpose.build("tiny", impl="reference")
    with count_ops() as c:
        model(np.zeros((1, 3, 128, 96), np.float32))
    assert c.macs_under("stem.0.dw") == 64 * 48 * 3 * 25
    assert c.macs_under("stem.0.pw") == 64 * 48 * 3 * 8
    assert c.macs_under("stem.1.dw") == 32 * 24 * 8 * 25
    assert c.macs_under("stem.1.pw") == 32 * 24 * 8 * 16
    assert c.macs_under("head") == 32 * 24 * 32 * 17
    # s4: 4x3 map, the 8x6 window clamped to it: 12 tokens, C = 96
    assert dict(c.by_layer["s4.blocks.0.win"]) == {"attention_qk": 12 * 12 * 96, "attention_av": 12 * 12 * 96}


@pytest.mark.slow
def test_stem_and_head_macs_by_hand():
    _, c = counted("wgnet")
    # stem.0: dw 5x5 s2 on 3 ch -> 128x96; pw 3 -> 16. stem.1: dw 5x5 s2 on 16 ch -> 64x48; pw 16 -> 32
    assert c.macs_under("stem.0.dw") == 128 * 96 * 3 * 25 == 921_600
    assert c.macs_under("stem.0.pw") == 128 * 96 * 3 * 16 == 589_824
    assert c.macs_under("stem.1.dw") == 64 * 48 * 16 * 25 == 1_228_800
    assert c.macs_under("stem.1.pw") == 64 * 48 * 16 * 32 == 1_572_864
    assert c.macs_under("stem") == 4_313_088
    # head: 1x1 conv 96 -> 17 on 64x48
    assert c.macs_under("head") == 64 * 48 * 96 * 17 == 5_013_504


@pytest.mark.slow
def test_window_attention_block_macs_by_hand():
    _, c = counted("wgnet")
    # s4: one 8x6 window of 48 tokens, C = 256. qkv 48·256·768, proj 48·256·256,
    # QK^T and AV 48·48·256 each (Eq. (1) without its projections, plus them)
    assert c.by_layer["s4.blocks.0.win.qkv"] == {"linear": 48 * 256 * 768}
    assert c.by_layer["s4.blocks.0.win.proj"] == {"linear": 48 * 256 * 256}
    assert c.by_layer["s4.blocks.0.win"] == {"attention_qk": 48 * 48 * 256, "attention_av": 48 * 48 * 256}
    assert c.macs_under("s4.blocks.0.win") == 13_762_560


@pytest.mark.slow
def test_global_attention_block_macs_by_hand():
    _, c = counted("wgnet")
    # s1: 64x48 map, 16x12 windows, 4x3 patches: every query meets (64/16)(48/12)·12 = 192 keys
    assert c.by_layer["s1.blocks.0.glob"] == {"attention_qk": 64 * 48 * 192 * 96, "attention_av": 64 * 48 * 192 * 96}
    # s2: 32x24, 8x6 windows: window queries meet 48 keys; global queries (32/8)(24/6)·12 = 192
    assert c.by_layer["s2.blocks.1.win"]["attention_qk"] == 32 * 24 * 48 * 160
    assert c.by_layer["s2.blocks.1.glob"]["attention_qk"] == 32 * 24 * 192 * 160


@pytest.mark.slow
def test_counts_add_up():
    _, c = counted("wgnet")
    assert set(c.by_kind) <= set(MAC_KINDS)
    assert sum(sum(k.values()) for k in c.by_layer.values()) == c.macs
    stages = ["stem", "s1", "s2", "s3", "s4", "d1", "d2", "d3", "head"]
    assert sum(c.macs_under(s) for s in stages) == c.macs
    # elementwise work is tallied, apart from the MAC kinds
    assert c.elementwise and not set(c.elementwise) & set(MAC_KINDS)


# --- single ops of known shape ------------------------------------------------------------------
def test_linear_reports_tokens_times_in_times_out():
    x, w, b = rand(2, 5, 7, 16), rand(24, 16), rand(24)
    with count_ops() as c:
        OPS.linear(x, w, b)
    assert c.macs == 2 * 5 * 7 * 16 * 24 == 26_880
    assert dict(c.by_kind) == {"linear": 26_880}
    assert c.elementwise == {}


def test_linear_layer_reports_under_its_name():
    layer = Linear(OPS, 16, 24)
    layer.path = "s1.blocks.0.win.qkv"
    layer.bind(lambda k: {"weight": rand(24, 16), "bias": rand(24)}[k])
    with count_ops() as c:
        layer(rand(1, 4, 3, 16))
    assert {k: dict(v) for k, v in c.by_layer.items()} == {"s1.blocks.0.win.qkv": {"linear": 12 * 16 * 24}}


@pytest.mark.parametrize("run, kind, macs", [
    # 1x1 conv on 2x6x4, 8 -> 16 channels
    (lambda: OPS.conv(rand(2, 6, 4, 8), rand(16, 8, 1, 1), None), "conv", 2 * 6 * 4 * 8 * 16),
    # 3x3 conv, stride 2: 7x5 -> 4x3, 2 -> 3 channels
    (lambda: OPS.conv(rand(1, 7, 5, 2), rand(3, 2, 3, 3), None, 2), "conv", 4 * 3 * 3 * 2 * 9),
    # depthwise 5x5 stride 2 on 7x5x3 -> 4x3x3 outputs, 25 taps each
    (lambda: OPS.depthwise_conv(rand(1, 7, 5, 3), rand(3, 1, 5, 5), None, 2), "depthwise_conv", 4 * 3 * 3 * 25),
    # transposed 2x2 s2 on 3x4, 6 -> 5 channels: every input pixel meets 6·5·4 weights
    (lambda: OPS.conv_transpose(rand(1, 3, 4, 6), rand(6, 5, 2, 2), None, 2), "conv_transpose", 3 * 4 * 6 * 5 * 4),
])
def test_conv_kinds(run, kind, macs):
    with count_ops() as c:
        run()
    assert dict(c.by_kind) == {kind: macs}


@pytest.mark.parametrize("kind, window, patch, keys_per_query", [
    ("window", (4, 3), (4, 3), 12),                 # 8x6 map, 4x3 windows: 12 tokens
    ("global", (4, 3), (2, 1), (8 // 4) * (6 // 3) * 2 * 1),   # patch k of the 4 windows: 8 tokens
    ("global", (4, 3), (1, 1), 4),                  # grid attention
])
def test_attention_matmuls(kind, window, patch, keys_per_query):
    # 2 images of 8x6, C = 64 in 2 heads: 96 queries, each meeting keys_per_query keys over 64
    # channels, once for QK^T and once for AV; the softmax is elementwise
    with count_ops() as c:
        OPS.grouped_attention(rand(2, 8, 6, 192), 2, kind, window, patch)
    qk = 2 * 8 * 6 * keys_per_query * 64
    assert dict(c.by_kind) == {"attention_qk": qk, "attention_av": qk}
    assert c.elementwise["softmax"] == 2 * 8 * 6 * keys_per_query * 2    # per head


def test_squeeze_excite_counts_its_two_1x1_convs_only():
    # C = 64, r = 4: 64·16 + 16·64 MACs per image; the pooling and the gating are elementwise
    x = rand(2, 4, 3, 64)
    with count_ops() as c:
        OPS.squeeze_excite(x, rand(16, 64, 1, 1), rand(16), rand(64, 16, 1, 1), rand(64))
    assert c.macs == 2 * (64 * 16 + 16 * 64) == 4096
    assert c.elementwise["pool"] == x.size and c.elementwise["se_gate"] == x.size


def test_elementwise_work_is_not_in_macs():
    x = rand(2, 4, 3, 8)
    with count_ops() as c:
        OPS.layer_norm(x, np.ones(8), np.zeros(8))
        OPS.add(x, x)
    assert c.macs == 0 and dict(c.by_kind) == {}
    assert c.elementwise == {"layer_norm": x.size, "add": x.size}
    # an activation fused into a conv adds no MACs
    with count_ops() as c:
        OPS.conv(x, rand(8, 8, 1, 1), None, relu6=True)
    assert c.macs == 2 * 4 * 3 * 8 * 8
    assert c.elementwise == {"relu6": 2 * 4 * 3 * 8}


# --- the context --------------------------------------------------------------------------------
def test_nothing_is_counted_outside_the_context():
    x, w, b = rand(2, 5, 7, 16), rand(24, 16), rand(24)
    OPS.linear(x, w, b)                       # no counter open: runs, reports nowhere
    with count_ops() as c:
        pass
    assert c.macs == 0 and c.elementwise == {} and c.by_layer == {}
    with count_ops() as c:
        OPS.linear(x, w, b)
    OPS.linear(x, w, b)                       # after the block: not added
    OPS.layer_norm(x, np.ones(16), np.zeros(16))
    assert c.macs == 26_880 and c.elementwise == {}


def test_the_counter_closes_when_the_block_raises():
    x, w = rand(1, 2, 2, 4), rand(3, 4)
    with pytest.raises(RuntimeError):
        with count_ops() as c:
            OPS.linear(x, w, None)
            raise RuntimeError("boom")
    OPS.linear(x, w, None)
    assert c.macs == 4 * 4 * 3


def test_model_counts_scale_with_batch_and_not_with_dtype_or_impl():
    # every op is per image: N images cost N times one; the dtype and the op implementation
    # do not change what is computed
    counts = {}
    for N, dtype, impl in [(1, "float32", "reference"), (2, "float32", "reference"),
                           (1, "float64", "reference"), (1, "float32", "fast")]:
        model = refpose.build("tiny", dtype=dtype, impl=impl)
        with count_ops() as c:
            model(np.zeros((N, 3, 128, 96), dtype))
        counts[N, dtype, impl] = c.macs
    one = counts[1, "float32", "reference"]
    assert one > 0
    assert counts[2, "float32", "reference"] == 2 * one
    assert counts[1, "float64", "reference"] == one == counts[1, "float32", "fast"]


def test_unknown_kind_is_refused():
    with count_ops():
        with pytest.raises(ValueError, match="unknown MAC kind"):
            report("softmax", 10)


def test_attention_macs_come_from_the_grouped_shape_not_from_eq2():
    # tiny's s4 runs on a 4x3 map (input 128x96) with a configured 8x6 window, clamped to the map:
    # the kernels see one group of all 12 tokens per image. Eq. (2)'s window term with the
    # configured window, 2 h w h' w' C, would claim 48 keys per query; the map has 12.
    from analysis.formulas import check_shapes
    from refpose.ops.geometry import clamp_window, partition

    cfg = refpose.get_config("tiny")
    stage = cfg.stages["s4"]
    N, (h, w), C = 2, cfg.map_size("s4"), stage.channels
    assert (h, w) == (4, 3) and stage.window == (8, 6) and not stage.global_attn
    with pytest.raises(refpose.ConfigError):
        check_shapes(h, w, C, stage.window, None)       # the formula has no reading of this shape
    model = refpose.build(cfg, impl="reference")
    with count_ops() as c:
        model(np.zeros((N, 3, *cfg.input_size)))
    counted = c.by_layer["s4.blocks.0.win"]["attention_qk"]
    # the grouped tensor itself, from the same partition of a real map as the kernels receive
    G, T, _ = partition(np.zeros((N, h, w, C)), "window", clamp_window(stage.window, h, w), stage.patch).shape
    assert (G, T) == (N, 12)
    assert counted == G * T * T * C == N * h * w * 12 * C
    assert counted != N * h * w * (stage.window[0] * stage.window[1]) * C   # the unclamped formula
