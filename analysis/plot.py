"""Table 1 as a figure: Flop_WNet_attn and its two halves against alpha, Eq. (1) as a line.

Needs matplotlib (the `plot` extra). The file is written whole or not at all.
"""
from __future__ import annotations

import os
import tempfile


def plot_table1(rows: list[dict], eq1: int, C: int, h: int, w: int, path: str) -> None:
    """Draw the MACs at C of each Table 1 row (from `paper.table1`) to `path` (format from its suffix)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such directory {folder}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = [r["alpha"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for col, label, style in (("wnet", "Flop_WNet_attn (Eq. 2)", "o-"),
                              ("win", "Flop_win_attn", "s--"),
                              ("glo", "Flop_glo_attn", "^--")):
        ax.plot(alphas, [r[col]["computed"]["macs"] for r in rows], style, label=label)
    ax.axhline(eq1, color="k", lw=1, label="Flop_MHSA (Eq. 1)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(alphas, [str(a) for a in alphas])
    ax.set_xlabel("alpha (window 4·alpha x 3·alpha)")
    ax.set_ylabel("MACs (1 FLOP = 1 multiply-accumulate)")
    ax.set_title(f"Self-attention cost on a {h}x{w} map, C = {C}")
    ax.legend(fontsize=8)
    fig.tight_layout()

    fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1] or ".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
