"""Window and global (patch-grid) grouping, refpose/ops/geometry.py (paper section 3.2, Fig. 2).

Group membership is enumerated by hand from DESIGN section 1: a window group is one window;
global group k holds patch k of every window. Counts are the closed forms
N·(H/wh)(W/ww) windows of wh·ww tokens, and N·(wh/ph)(ww/pw) global groups of
(H/wh)(W/ww)·ph·pw tokens.
"""
import numpy as np
import pytest

from refpose.ops.geometry import check_grouping, global_partition, global_reverse, partition, reverse, window_partition, window_reverse


def coordinate_map(N, H, W):
    """(N, H, W, 3) int map whose value at (n, h, w) is (n, h, w)."""
    n, h, w = np.meshgrid(np.arange(N), np.arange(H), np.arange(W), indexing="ij")
    return np.stack([n, h, w], axis=-1)


def members(groups):
    """Each group as a set of (n, h, w) pixel coordinates (token order inside a group does
    not matter: global attention has no positional term)."""
    return [{tuple(int(v) for v in tok) for tok in g} for g in groups]


# --- membership, enumerated by hand --------------------------------------------------------
def test_window_groups_by_hand():
    # 4x6 map, 2x3 windows: four windows in row-major order
    groups = window_partition(coordinate_map(1, 4, 6), 2, 3)
    assert groups.shape == (4, 6, 3)
    assert members(groups) == [
        {(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 1, 2)},
        {(0, 0, 3), (0, 0, 4), (0, 0, 5), (0, 1, 3), (0, 1, 4), (0, 1, 5)},
        {(0, 2, 0), (0, 2, 1), (0, 2, 2), (0, 3, 0), (0, 3, 1), (0, 3, 2)},
        {(0, 2, 3), (0, 2, 4), (0, 2, 5), (0, 3, 3), (0, 3, 4), (0, 3, 5)},
    ]


def test_global_groups_by_hand():
    # 4x8 map, 2x4 windows (2x2 of them), 1x2 patches (2x2 per window): group (i, j) holds the
    # 1x2 patch (i, j) of each of the four windows -- rows i, i+2 and columns 2j, 2j+1, 2j+4, 2j+5
    groups = global_partition(coordinate_map(1, 4, 8), 2, 4, 1, 2)
    assert groups.shape == (4, 8, 3)
    assert members(groups) == [
        {(0, 0, 0), (0, 0, 1), (0, 0, 4), (0, 0, 5), (0, 2, 0), (0, 2, 1), (0, 2, 4), (0, 2, 5)},   # patch (0, 0)
        {(0, 0, 2), (0, 0, 3), (0, 0, 6), (0, 0, 7), (0, 2, 2), (0, 2, 3), (0, 2, 6), (0, 2, 7)},   # patch (0, 1)
        {(0, 1, 0), (0, 1, 1), (0, 1, 4), (0, 1, 5), (0, 3, 0), (0, 3, 1), (0, 3, 4), (0, 3, 5)},   # patch (1, 0)
        {(0, 1, 2), (0, 1, 3), (0, 1, 6), (0, 1, 7), (0, 3, 2), (0, 3, 3), (0, 3, 6), (0, 3, 7)},   # patch (1, 1)
    ]


def test_global_groups_of_a_batch_stay_inside_their_image():
    # 2 images, 4x6 map, 2x3 windows, 2x3 patches (the patch is the window): one group per
    # image holding all of its 24 pixels
    groups = global_partition(coordinate_map(2, 4, 6), 2, 3, 2, 3)
    assert groups.shape == (2, 24, 3)
    assert members(groups) == [{(n, h, w) for h in range(4) for w in range(6)} for n in range(2)]


def test_global_groups_at_the_paper_geometry():
    # s1 of wgnet: 64x48 map, 16x12 windows, 4x3 patches. Group (i, j) = patch (i, j) of each
    # of the 4x4 windows: pixels (16a + 4i + p, 12b + 3j + q), p < 4, q < 3
    groups = global_partition(coordinate_map(1, 64, 48), 16, 12, 4, 3)
    assert groups.shape == (16, 192, 3)
    got = members(groups)
    for i in range(4):
        for j in range(4):
            want = {(0, 16 * a + 4 * i + p, 12 * b + 3 * j + q)
                    for a in range(4) for b in range(4) for p in range(4) for q in range(3)}
            assert got[4 * i + j] == want


# --- counts: closed forms ------------------------------------------------------------------
# (N, H, W, window, patch)
SHAPES = [
    (1, 64, 48, (16, 12), (4, 3)),   # s1 / d3 of wgnet
    (2, 32, 24, (8, 6), (4, 3)),     # s2 / d2
    (1, 16, 12, (8, 6), (4, 3)),     # s3 / d1
    (3, 8, 6, (8, 6), (4, 3)),       # s4: one window
    (2, 12, 10, (6, 5), (3, 1)),
    (1, 8, 6, (4, 3), (4, 3)),       # patch = window: one global group
    (2, 6, 6, (2, 3), (1, 1)),       # 1x1 patches: MaxViT's grid
    (1, 1, 1, (1, 1), (1, 1)),
]


@pytest.mark.parametrize("N, H, W, window, patch", SHAPES)
def test_group_and_token_counts(N, H, W, window, patch):
    (wh, ww), (ph, pw) = window, patch
    C = 2
    x = np.zeros((N, H, W, C))
    assert partition(x, "window", window, patch).shape == (N * (H // wh) * (W // ww), wh * ww, C)
    assert partition(x, "global", window, patch).shape == (N * (wh // ph) * (ww // pw), (H // wh) * (W // ww) * ph * pw, C)


def test_counts_at_the_paper_geometry_by_hand():
    # s1: 64x48, 16x12 windows -> 16 windows of 192 tokens; 4x3 patches -> 16 groups of 16·12 = 192
    x = np.zeros((1, 64, 48, 1))
    assert window_partition(x, 16, 12).shape[:2] == (16, 192)
    assert global_partition(x, 16, 12, 4, 3).shape[:2] == (16, 192)
    # s2: 32x24, 8x6 windows -> 16 windows of 48; 4x3 patches -> 4 groups of 16·12 = 192
    x = np.zeros((1, 32, 24, 1))
    assert window_partition(x, 8, 6).shape[:2] == (16, 48)
    assert global_partition(x, 8, 6, 4, 3).shape[:2] == (4, 192)


# --- partition then reverse is the identity ------------------------------------------------
@pytest.mark.parametrize("kind", ["window", "global"])
@pytest.mark.parametrize("N, H, W, window, patch", SHAPES)
def test_partition_then_reverse_is_identity(N, H, W, window, patch, kind):
    x = np.random.default_rng(0).standard_normal((N, H, W, 5))
    t = partition(x, kind, window, patch)
    # a permutation of the pixels: every value appears exactly once
    np.testing.assert_array_equal(np.sort(t, axis=None), np.sort(x, axis=None))
    np.testing.assert_array_equal(reverse(t, kind, x.shape, window, patch), x)


def test_reverse_of_each_kind_is_its_own_inverse():
    # the named functions too, not only the dispatchers
    x = np.random.default_rng(1).standard_normal((2, 16, 12, 3))
    np.testing.assert_array_equal(window_reverse(window_partition(x, 8, 6), 2, 16, 12, 8, 6), x)
    np.testing.assert_array_equal(global_reverse(global_partition(x, 8, 6, 4, 3), 2, 16, 12, 8, 6, 4, 3), x)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="kind"):
        partition(np.zeros((1, 4, 4, 1)), "grid", (2, 2), (1, 1))
    with pytest.raises(ValueError, match="kind"):
        reverse(np.zeros((4, 4, 1)), "grid", (1, 4, 4, 1), (2, 2), (1, 1))


# --- check_grouping --------------------------------------------------------------------------
@pytest.mark.parametrize("H, W, kind, window, patch, message", [
    (16, 12, "window", (5, 6), (1, 1), "window 5x6 does not divide the 16x12 map"),
    (16, 12, "window", (8, 5), (1, 1), "window 8x5 does not divide the 16x12 map"),
    (16, 12, "global", (6, 6), (3, 3), "window 6x6 does not divide the 16x12 map"),
    (16, 12, "global", (8, 6), (3, 3), "patch 3x3 does not divide the 8x6 window"),
    (16, 12, "global", (8, 6), (4, 4), "patch 4x4 does not divide the 8x6 window"),
])
def test_check_grouping_rejects(H, W, kind, window, patch, message):
    with pytest.raises(ValueError) as e:
        check_grouping(H, W, kind, window, patch)
    assert message in str(e.value)


@pytest.mark.parametrize("H, W, kind, window, patch", [
    (64, 48, "window", (16, 12), (4, 3)), (64, 48, "global", (16, 12), (4, 3)),
    (8, 6, "global", (8, 6), (8, 6)), (1, 1, "global", (1, 1), (1, 1)),
    (16, 12, "window", (8, 6), (3, 3)),    # the patch does not matter to window attention
])
def test_check_grouping_accepts(H, W, kind, window, patch):
    assert check_grouping(H, W, kind, window, patch) is None
