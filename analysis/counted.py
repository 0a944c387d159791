"""Counted operations: run refpose's real layers inside `refpose.count_ops()` (DESIGN section 2).

Nothing here is a formula. The figures are what the ops report from their operand
shapes while they run; `analysis.formulas` says what they should be, and the analyzer
puts the two side by side.

The counter files `linear` MACs under the layer that ran them (`<path>.qkv`,
`<path>.proj`) and the attention matmuls (`attention_qk`, `attention_av`) under the
attention layer itself (`<path>`).
"""
from __future__ import annotations

import numpy as np

from refpose.config import STAGES, get_config
from refpose.counting import count_ops
from refpose.layers import Attention, walk
from refpose.ops import Ops

from .formulas import check_shapes

TERMS = ("qkv", "qk", "av", "proj")
KINDS = ("window", "global")
PATHS = {"window": "win", "global": "glob"}   # the weight-key names of DESIGN section 3


def _bind_random(layer: Attention, path: str, rng: np.random.Generator, dtype) -> None:
    """Name the layer tree under `path` and give it random tensors (values do not change counts)."""
    for sub, child in walk(layer, path):
        child.path = sub
        shapes = child.tensor_shapes()
        # fan-in scaled, so the softmax sees moderate scores
        child.bind(lambda k, s=shapes: (rng.standard_normal(s[k]) / np.sqrt(s[k][-1])).astype(dtype))


def terms_of(counter, path: str) -> dict[str, int]:
    """One attention layer's counted MACs by term, read from `counter.by_layer`."""
    by_layer = counter.by_layer
    return dict(qkv=by_layer[f"{path}.qkv"]["linear"], qk=by_layer[path]["attention_qk"],
                av=by_layer[path]["attention_av"], proj=by_layer[f"{path}.proj"]["linear"])


def count_attention(h: int, w: int, C: int, window: tuple[int, int], patch: tuple[int, int],
                    kinds: tuple[str, ...] = KINDS, impl: str = "reference", seed: int = 0) -> dict:
    """Run window then global attention (one head, as the paper assumes) on a random (1, h, w, C) map.

    Returns {kind: {qkv, qk, av, proj}} for each kind run, and their sum under "total".
    `kinds=("window",)` with `window=(h, w)` is full-map attention, i.e. MHSA.
    """
    check_shapes(h, w, C, window, patch if "global" in kinds else None)
    ops = Ops(impl)
    rng = np.random.default_rng(seed)
    layers = []
    for kind in kinds:
        layer = Attention(ops, C, kind, window, patch, head_dim=C)     # one head: head_dim = C
        _bind_random(layer, PATHS[kind], rng, np.float32)
        layers.append(layer)
    x = rng.standard_normal((1, h, w, C)).astype(np.float32)           # (N, H, W, C)
    with count_ops() as counter:
        for layer in layers:
            x = layer(x)
    out = {kind: terms_of(counter, PATHS[kind]) for kind in kinds}
    out["total"] = {t: sum(out[kind][t] for kind in kinds) for t in TERMS}
    if sum(out["total"].values()) != counter.macs:
        raise RuntimeError("the attention layers ran ops the analyzer does not attribute to a term")
    return out


def count_network(config, input_size: tuple[int, int] | None = None, impl: str = "reference") -> dict:
    """Run the NumPy forward of a config on a zero input and collect the attention terms per stage.

    Returns the total MACs, MACs by op kind, and for every stage with attention its map,
    window, patch and the counted {qkv, qk, av, proj} of each attention kind, summed over
    its WNet blocks.
    """
    from refpose.summary import counted_forward

    cfg = get_config(config)
    H, W = input_size or cfg.input_size
    model, counter = counted_forward(cfg, (H, W), impl)
    stages = []
    for name in STAGES:
        st = cfg.stages[name]
        blocks = getattr(model, name).blocks
        kinds = {}
        for kind in KINDS:
            paths = [f"{name}.blocks.{j}.{PATHS[kind]}" for j in range(len(blocks))
                     if hasattr(blocks.layers[j], PATHS[kind])]
            if paths:
                per_block = [terms_of(counter, p) for p in paths]
                kinds[kind] = {t: sum(b[t] for b in per_block) for t in TERMS}
        if kinds:
            h, w = cfg.map_size(name, (H, W))
            stages.append(dict(stage=name, map=(h, w), channels=st.channels, blocks=len(blocks),
                               window=cfg.window_of(name, (H, W)), patch=st.patch,
                               heads=st.channels // cfg.head_dim, counted=kinds))
    return dict(config=cfg.name, input=(H, W), macs=counter.macs, macs_by_kind=dict(counter.by_kind),
                elementwise=dict(counter.elementwise), stages=stages)
