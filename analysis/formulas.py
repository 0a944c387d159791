"""The paper's complexity formulas as pure functions of shapes (section 3.2, Eq. (1), Eq. (2)).

One multiply-accumulate is one FLOP, as in the paper (DESIGN section 2): a C x C
projection of hw tokens costs hwC^2. The paper assumes one head and ignores softmax;
so do these formulas (the MAC count of QK^T and AV does not depend on the number of
heads anyway: heads x head_dim = C).

Every term is either a projection (proportional to C^2) or an attention matmul
(proportional to C), so a cost is kept as the pair of coefficients `Cost(c2, c1)`:
`Cost.at(C)` gives MACs, `Cost.M` / `Cost.N` the paper's Table 1 units
(M = 1e3 C^2, N = 1e5 C).

Shapes: a map of h x w tokens with C channels, windows of h' x w' = `window`,
patches of ph x pw = `patch` (the paper's 4 x 3).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from refpose.errors import ConfigError
from refpose.ops.geometry import tiling_problem

PAPER_MAP = (64, 48)      # 256 x 192 after two stride-2 layers (section 3.2)
PAPER_PATCH = (4, 3)      # "We let the size of each patch take 4x3"
PAPER_ALPHAS = (1, 2, 4, 8, 16)
M_UNIT = 1000             # Table 1: M = 1e3 C^2
N_UNIT = 100000           # Table 1: N = 1e5 C


@dataclass(frozen=True)
class Cost:
    """c2*C^2 + c1*C multiply-accumulates."""

    c2: int   # projections (qkv, output)
    c1: int   # attention matmuls (QK^T, AV)

    def at(self, C: int) -> int:
        return self.c2 * C * C + self.c1 * C

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.c2 + other.c2, self.c1 + other.c1)

    @property
    def M(self) -> Fraction:
        """The C^2 coefficient in the paper's unit M = 1e3 C^2 (exact)."""
        return Fraction(self.c2, M_UNIT)

    @property
    def N(self) -> Fraction:
        """The C coefficient in the paper's unit N = 1e5 C (exact)."""
        return Fraction(self.c1, N_UNIT)


def alpha_window(alpha: int) -> tuple[int, int]:
    """The paper's window for a given alpha: 4*alpha x 3*alpha (section 3.2, Table 1)."""
    return 4 * alpha, 3 * alpha


def check_shapes(h: int, w: int, C: int | None, window: tuple[int, int],
                 patch: tuple[int, int] | None) -> None:
    """Raise ConfigError unless the window divides the map and the patch divides the window.

    `patch=None` checks window attention only. The rule is `refpose.ops.geometry.tiling_problem`.
    """
    if h <= 0 or w <= 0:
        raise ConfigError(f"the map must have positive sides, got {h}x{w}")
    if C is not None and C <= 0:
        raise ConfigError(f"C must be a positive number of channels, got {C}")
    problem = tiling_problem(h, w, "window" if patch is None else "global", window, patch or (1, 1))
    if problem:
        raise ConfigError(problem)


# --- Eq. (1) and Eq. (2), written as printed ----------------------------------------------
def eq1(h: int, w: int, C: int) -> int:
    """Eq. (1): Flop_MHSA = 3hwC^2 + 2h^2w^2C (qkv projections, then QK^T and AV over all hw keys)."""
    check_shapes(h, w, C, (h, w), None)
    return 3 * h * w * C**2 + 2 * h**2 * w**2 * C


def eq2(h: int, w: int, C: int, window: tuple[int, int], patch: tuple[int, int] = PAPER_PATCH) -> int:
    """Eq. (2): Flop_WNet_attn = 6hwC^2 + 2hh'ww'C + 2(ph*pw)h^2w^2C/(h'w').

    With the paper's 4x3 patches 2*(ph*pw) = 24, the printed constant. The division is
    exact whenever the window divides the map: h^2w^2/(h'w') = hw * (h/h')(w/w').
    """
    check_shapes(h, w, C, window, patch)
    hp, wp = window
    ph, pw = patch
    return 6 * h * w * C**2 + 2 * h * hp * w * wp * C + 2 * (ph * pw) * h**2 * w**2 * C // (hp * wp)


# --- the terms, as coefficients of C^2 and C -------------------------------------------------
def mhsa(h: int, w: int) -> Cost:
    """Eq. (1) as a cost: every one of hw queries meets all hw keys."""
    return Cost(3 * h * w, 2 * (h * w) ** 2)


def window_attention(h: int, w: int, window: tuple[int, int]) -> Cost:
    """Flop_win_attn: qkv for hw tokens, then each query meets the h'w' keys of its window."""
    check_shapes(h, w, None, window, None)
    hp, wp = window
    return Cost(3 * h * w, 2 * h * w * hp * wp)


def global_tokens(h: int, w: int, window: tuple[int, int], patch: tuple[int, int]) -> int:
    """Tokens per global group: patch k of every window, (hw/(h'w')) * ph*pw (DESIGN section 1)."""
    check_shapes(h, w, None, window, patch)
    hp, wp = window
    ph, pw = patch
    return (h // hp) * (w // wp) * ph * pw


def global_attention(h: int, w: int, window: tuple[int, int], patch: tuple[int, int]) -> Cost:
    """Flop_glo_attn: qkv for hw tokens, then each query meets the hw*ph*pw/(h'w') keys of its group.

    2 * hw * (ph*pw*hw/(h'w')) * C = 2(ph*pw) h^2w^2C/(h'w'): Eq. (2)'s last term.
    """
    return Cost(3 * h * w, 2 * h * w * global_tokens(h, w, window, patch))


def wnet_attention(h: int, w: int, window: tuple[int, int], patch: tuple[int, int]) -> Cost:
    """Flop_WNet_attn = Flop_win_attn + Flop_glo_attn, i.e. Eq. (2)."""
    return window_attention(h, w, window) + global_attention(h, w, window, patch)


def projection(h: int, w: int) -> Cost:
    """The output projection Eq. (1) and (2) leave out: hw tokens through a C x C linear."""
    return Cost(h * w, 0)


def attention_terms(h: int, w: int, C: int, kind: str, window: tuple[int, int],
                    patch: tuple[int, int]) -> dict[str, int]:
    """MACs of one attention of `kind` ("window" or "global") by term: qkv, qk, av, proj."""
    check_shapes(h, w, C, window, patch if kind == "global" else None)
    if kind == "window":
        keys = window[0] * window[1]
    elif kind == "global":
        keys = global_tokens(h, w, window, patch)
    else:
        raise ConfigError(f"unknown attention kind {kind!r}")
    return dict(qkv=3 * h * w * C * C, qk=h * w * keys * C, av=h * w * keys * C, proj=h * w * C * C)


def below_mhsa_until(h: int, w: int, window: tuple[int, int], patch: tuple[int, int]) -> Fraction:
    """The C below which Eq. (2) < Eq. (1): the extra 3hwC^2 must be paid by the saved C terms.

    3hwC^2 + c1_wnet*C < 2h^2w^2C  <=>  C < (2h^2w^2 - c1_wnet) / (3hw). Non-positive: never.
    """
    wnet, full = wnet_attention(h, w, window, patch), mhsa(h, w)
    return Fraction(full.c1 - wnet.c1, wnet.c2 - full.c2)
