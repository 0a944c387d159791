"""Token grouping for WGNet's two attentions (paper section 3.2, Fig. 2).

All maps are NHWC. A map of H x W is cut into windows of wh x ww; every window is cut
into patches of ph x pw.

- window attention: one group per window, wh*ww tokens (Swin's window partition);
- global attention: group k gathers patch k of *every* window, so there are
  (wh/ph)(ww/pw) groups of (H/wh)(W/ww)*ph*pw tokens. With 1x1 patches this is
  MaxViT's grid attention; with the paper's 4x3 patches it gives Eq. (2)'s 24 term.

Row index of a pixel: h = a*wh + i*ph + p, with a the window row, i the patch row inside
the window and p the row inside the patch (columns alike with b, j, q).
"""
from __future__ import annotations

import functools

import numpy as np


def window_partition(x: np.ndarray, wh: int, ww: int) -> np.ndarray:
    """(N, H, W, C) -> (N*nh*nw, wh*ww, C), windows in row-major order per image."""
    N, H, W, C = x.shape
    nh, nw = H // wh, W // ww
    x = x.reshape(N, nh, wh, nw, ww, C)
    x = x.transpose(0, 1, 3, 2, 4, 5)                    # (N, nh, nw, wh, ww, C)
    return x.reshape(N * nh * nw, wh * ww, C)


def window_reverse(t: np.ndarray, N: int, H: int, W: int, wh: int, ww: int) -> np.ndarray:
    """Inverse of `window_partition`: (N*nh*nw, wh*ww, C) -> (N, H, W, C)."""
    C = t.shape[-1]
    nh, nw = H // wh, W // ww
    t = t.reshape(N, nh, nw, wh, ww, C)
    t = t.transpose(0, 1, 3, 2, 4, 5)                    # (N, nh, wh, nw, ww, C)
    return t.reshape(N, H, W, C)


def global_partition(x: np.ndarray, wh: int, ww: int, ph: int, pw: int) -> np.ndarray:
    """(N, H, W, C) -> (N*gh*gw, nh*ph*nw*pw, C): group (i, j) holds patch (i, j) of every window.

    gh, gw = wh/ph, ww/pw patches per window; nh, nw = H/wh, W/ww windows.
    """
    N, H, W, C = x.shape
    nh, nw, gh, gw = H // wh, W // ww, wh // ph, ww // pw
    x = x.reshape(N, nh, gh, ph, nw, gw, pw, C)          # h = (a, i, p), w = (b, j, q)
    x = x.transpose(0, 2, 5, 1, 3, 4, 6, 7)              # (N, gh, gw, nh, ph, nw, pw, C)
    return x.reshape(N * gh * gw, nh * ph * nw * pw, C)


def global_reverse(t: np.ndarray, N: int, H: int, W: int, wh: int, ww: int, ph: int, pw: int) -> np.ndarray:
    """Inverse of `global_partition`: (N*gh*gw, nh*ph*nw*pw, C) -> (N, H, W, C)."""
    C = t.shape[-1]
    nh, nw, gh, gw = H // wh, W // ww, wh // ph, ww // pw
    t = t.reshape(N, gh, gw, nh, ph, nw, pw, C)
    t = t.transpose(0, 3, 1, 4, 5, 2, 6, 7)              # (N, nh, gh, ph, nw, gw, pw, C)
    return t.reshape(N, H, W, C)


def partition(x: np.ndarray, kind: str, window: tuple[int, int], patch: tuple[int, int]) -> np.ndarray:
    """Group a map for attention of `kind` ("window" or "global")."""
    if kind == "window":
        return window_partition(x, *window)
    if kind == "global":
        return global_partition(x, *window, *patch)
    raise ValueError(f"unknown attention kind {kind!r}")


def reverse(t: np.ndarray, kind: str, shape: tuple, window: tuple[int, int], patch: tuple[int, int]) -> np.ndarray:
    """Inverse of `partition`; `shape` is the (N, H, W, C) of the map."""
    N, H, W, _ = shape
    if kind == "window":
        return window_reverse(t, N, H, W, *window)
    if kind == "global":
        return global_reverse(t, N, H, W, *window, *patch)
    raise ValueError(f"unknown attention kind {kind!r}")


def clamp_window(window: tuple[int, int], H: int, W: int) -> tuple[int, int]:
    """The configured window clamped to an H x W map: wh = min(window_h, H) (DESIGN section 1)."""
    wh, ww = window
    return min(wh, H), min(ww, W)


def tiling_problem(H: int, W: int, kind: str, window: tuple[int, int], patch: tuple[int, int]) -> str | None:
    """Why windows of `window` (already clamped) do not tile an H x W map, or patches the
    window for global attention; None when they do (DESIGN section 1)."""
    wh, ww = window
    if wh <= 0 or ww <= 0 or H % wh or W % ww:
        return f"window {wh}x{ww} does not divide the {H}x{W} map"
    ph, pw = patch
    if kind == "global" and (ph <= 0 or pw <= 0 or wh % ph or ww % pw):
        return f"patch {ph}x{pw} does not divide the {wh}x{ww} window"
    return None


def check_grouping(H: int, W: int, kind: str, window: tuple[int, int], patch: tuple[int, int]) -> None:
    """Raise ValueError when the window does not divide the map or the patch the window."""
    problem = tiling_problem(H, W, kind, window, patch)
    if problem:
        raise ValueError(problem)


def conv_out_size(n: int, k: int, stride: int) -> int:
    """Output length of a conv with padding k // 2 (PyTorch: floor((n + 2 pad - k) / stride) + 1)."""
    return (n + 2 * (k // 2) - k) // stride + 1


@functools.lru_cache(maxsize=64)
def token_pixels(N: int, H: int, W: int, kind: str, window: tuple[int, int],
                 patch: tuple[int, int]) -> np.ndarray:
    """(groups, tokens) int64: the flat pixel index n*H*W + h*W + w of token t of group g.

    `partition` itself applied to a map of indices, so the fast kernels group exactly as the
    reference does and the op counter reads the grouped shape from it; cached (read-only)
    since a network asks for the same few shapes on every forward.
    """
    idx = np.arange(N * H * W, dtype=np.int64).reshape(N, H, W, 1)
    pix = np.ascontiguousarray(partition(idx, kind, window, patch)[..., 0])   # (G, T)
    pix.setflags(write=False)
    return pix
