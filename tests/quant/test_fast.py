"""The int8 fast path gives the integers of the NumPy oracle (np.array_equal), over odd sizes,
strides, 1x1 maps, single windows and batches; the oracle's convs against an independent float64
definition."""
import os
import subprocess
import sys

import numpy as np
import pytest

import refpose
from refpose.ops import reference as fref
from refpose.ops.geometry import clamp_window
from refpose.quant import fast, reference, simd

RNG = np.random.default_rng(7)


def codes(*shape):
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def weights(*shape):
    return RNG.integers(-127, 128, shape).astype(np.int8)


def frozen(a):
    a = np.array(a)
    a.setflags(write=False)
    return a


@pytest.mark.parametrize("kind,k,stride,cin,cout,hw", [
    ("conv", 1, 1, 5, 7, (3, 5)), ("conv", 1, 1, 37, 51, (9, 7)), ("conv", 1, 2, 16, 24, (7, 5)),
    ("conv", 1, 1, 3, 1, (1, 1)), ("depthwise", 3, 1, 13, 13, (5, 7)), ("depthwise", 3, 2, 9, 9, (7, 6)),
    ("depthwise", 5, 2, 3, 3, (9, 11)), ("depthwise", 3, 1, 4, 4, (1, 1)), ("transposed", 2, 2, 11, 6, (3, 4)),
    ("transposed", 2, 2, 64, 48, (1, 1)),
])
@pytest.mark.parametrize("batch", [1, 3])
def test_conv_same_integers(kind, k, stride, cin, cout, hw, batch):
    x = codes(batch, *hw, cin)
    shape = {"conv": (cout, cin, k, k), "depthwise": (cout, 1, k, k), "transposed": (cin, cout, k, k)}[kind]
    w = frozen(weights(*shape))
    b = frozen(RNG.integers(-5000, 5000, cout).astype(np.int32))
    mult = frozen(RNG.uniform(1e-4, 5e-3, cout).astype(np.float32))
    for lo, hi in ((0, 255), (17, 200)):
        want = reference.conv(x, 77, w, b, kind, stride, mult, 31, lo, hi)
        got = fast.conv(x, 77, w, b, kind, stride, mult, 31, lo, hi)
        assert got.dtype == np.uint8 and np.array_equal(got, want)


@pytest.mark.parametrize("kind,k,stride", [("conv", 1, 1), ("conv", 1, 2), ("depthwise", 3, 2), ("depthwise", 5, 1),
                                           ("transposed", 2, 2)])
def test_reference_acc_is_the_definition(kind, k, stride):
    """conv_acc = sum (x - zx) w + b, computed independently with the float64 reference ops
    (exact: every value is an integer below 2^53)."""
    x, zx = codes(2, 7, 5, 6), 100
    shape = {"conv": (4, 6, k, k), "depthwise": (6, 1, k, k), "transposed": (6, 4, k, k)}[kind]
    w = weights(*shape)
    b = RNG.integers(-100, 100, shape[1] if kind == "transposed" else shape[0]).astype(np.int32)
    op = {"conv": fref.conv2d, "depthwise": fref.depthwise_conv2d, "transposed": fref.conv_transpose2d}[kind]
    want = op(x.astype(np.float64) - zx, w.astype(np.float64), b.astype(np.float64), stride)
    assert np.array_equal(reference.conv_acc(x, zx, w, b, kind, stride), want.astype(np.int64))


def test_impulse_lands_on_every_tap():
    """A single code one step above the zero point, distinct weights: the depthwise output at
    offset (i, j) from the impulse holds the weight of tap (k-1-i, k-1-j)."""
    k, zx = 3, 50
    x = np.full((1, 5, 5, 2), zx, np.uint8)
    x[0, 2, 2, :] = zx + 1
    w = frozen(np.arange(1, 2 * k * k + 1, dtype=np.int8).reshape(2, 1, k, k))
    acc = reference.conv_acc(x, zx, w, np.zeros(2, np.int32), "depthwise")
    for c in range(2):
        assert np.array_equal(acc[0, 1:4, 1:4, c], w[c, 0, ::-1, ::-1])
    got = fast.conv(x, zx, w, np.zeros(2, np.int32), "depthwise", 1, np.ones(2, np.float32), 0)
    assert np.array_equal(got[0, 1:4, 1:4], np.clip(acc[0, 1:4, 1:4], 0, 255))


def test_head_float_output_same_bits():
    x, w = codes(2, 3, 5, 19), frozen(weights(17, 19, 1, 1))
    b = frozen(RNG.integers(-900, 900, 17).astype(np.int32))
    m = frozen(RNG.uniform(1e-5, 1e-3, 17).astype(np.float32))
    assert np.array_equal(fast.conv_float(x, 9, w, b, m), reference.conv_float(x, 9, w, b, m))


def test_add_and_layer_norm_same_integers():
    a, b = codes(2, 3, 5, 40), codes(2, 3, 5, 40)
    pa, pb, py = (np.float32(0.02), 128), (np.float32(0.037), 3), (np.float32(0.05), 90)
    assert np.array_equal(fast.add(a, pa, b, pb, py), reference.add(a, pa, b, pb, py))
    w, bias = frozen(RNG.uniform(0.5, 1.5, 40).astype(np.float32)), frozen(RNG.normal(0, 0.1, 40).astype(np.float32))
    for px in ((np.float32(0.02), 128), (np.float32(1e-3), 0)):
        want = reference.layer_norm(a, px, w, bias, 1e-5, py)
        assert np.array_equal(fast.layer_norm(a, px, w, bias, 1e-5, py), want)


@pytest.mark.parametrize("kind,hw,window,heads,d", [("window", (8, 6), (8, 6), 2, 32), ("window", (16, 12), (8, 6), 1, 32),
                                                    ("global", (16, 12), (8, 6), 2, 32), ("global", (8, 6), (8, 6), 3, 32),
                                                    # odd head widths, odd token counts, more tokens than a panel
                                                    ("window", (10, 14), (5, 7), 3, 7), ("window", (9, 13), (9, 13), 1, 19),
                                                    ("global", (16, 18), (8, 9), 2, 33)])
@pytest.mark.parametrize("batch", [1, 2])
def test_attention_same_integers(kind, hw, window, heads, d, batch):
    C = d * heads
    qkv = codes(batch, *hw, 3 * C)
    table = reference.exp_table(np.float32(0.08))
    window = clamp_window(window, *hw)
    args = (qkv, 120, heads, kind, window, (4, 3), np.float32(0.004), 60, table, np.float32(0.07), 128)
    assert np.array_equal(fast.attention(*args), reference.attention(*args))


def test_softmax_codes_by_hand():
    # two keys at the same score: 2^24 each, p = 2^24 * (255 / 2^25) = 127.5 exactly -> 128 (even)
    table = reference.exp_table(np.float32(1.0))
    assert reference.softmax_codes(np.array([[9, 9]], np.uint8), table).tolist() == [[128, 128]]
    # one key far below: table[255] = round(2^24 e^-255) = 0 -> [255, 0]
    assert reference.softmax_codes(np.array([[200, 0]], np.uint8), table).tolist() == [[255, 0]]


def test_the_instruction_follows_the_target():
    assert simd.has_vnni("+avx2,+avx512f,+avx512vnni") and simd.has_vnni("+avx2,+avxvnni")
    assert not simd.has_vnni("+avx2,+fma,-avx512f") and not simd.has_vnni("+avx2,-avxvnni,+avx512vnni")
    assert simd.GROUP == (4 if simd.VNNI else 2)


def _features(add=(), drop=("avx512", "avxvnni")) -> str:
    """This CPU's features with some switched off (`drop`: prefixes) and some on (`add`)."""
    from llvmlite import binding

    host = [f for f in binding.get_host_cpu_features().flatten().split(",") if f]
    host = ["-" + f[1:] if f[1:].startswith(drop) else f for f in host]
    return ",".join(host + [f"+{f}" for f in add])


VNNI_PROBE = """
import numba
from refpose.quant import kernels, simd
assert simd.VNNI, simd.INSTRUCTION
scale = numba.types.Tuple((numba.float32[::1], numba.int32, numba.int32, numba.int32))
sig = (numba.uint8[:, ::1], numba.intp, numba.int8[::1], numba.int32[::1], scale, numba.uint8[:, ::1])
kernels._matmul.compile(sig)
print(simd.INSTRUCTION, "vpdpbusd" in kernels._matmul.inspect_asm(sig))
"""


@pytest.mark.slow
@pytest.mark.parametrize("cpu,add,want", [
    ("icelake-server", ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512vnni"), "vpdpbusd (512-bit)"),
    ("alderlake", ("avxvnni",), "vpdpbusd (256-bit)")])
def test_vnni_builds_use_vpdpbusd(tmp_path, cpu, add, want):
    """Compiled for a CPU with AVX-512 VNNI or AVX-VNNI, the tile's machine code holds vpdpbusd. This
    only compiles: a CPU without VNNI cannot run it, so on such a machine (this project's test
    machine) the integers of the VNNI path are not checked by running it."""
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=_features(add), NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", VNNI_PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == f"{want} True"


HASWELL_PROBE = """
import sys, numpy as np, refpose
from refpose.quant import simd
x = (0.8 * np.random.default_rng(3).standard_normal((2, 3, 128, 96))).astype(np.float32)
np.save(sys.argv[2], refpose.load(sys.argv[1])(x))
print(simd.INSTRUCTION)
"""


@pytest.mark.slow
def test_plain_path_build_gives_the_same_integers(int8_file, tmp_path):
    """Kernels compiled for an AVX2 CPU without VNNI (vpmaddwd) give the oracle's output, so a
    machine with VNNI tests the plain path this way (and a machine without tests it directly)."""
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=_features(), NUMBA_CACHE_DIR=str(tmp_path))
    out = tmp_path / "haswell.npy"
    r = subprocess.run([sys.executable, "-c", HASWELL_PROBE, int8_file, str(out)], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "vpmaddwd (256-bit)"
    x = (0.8 * np.random.default_rng(3).standard_normal((2, 3, 128, 96))).astype(np.float32)
    assert np.array_equal(np.load(out), refpose.load(int8_file, impl="reference")(x))
