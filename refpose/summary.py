"""Sizes of a configuration: parameters and MACs, per stage and per op kind.

MACs are counted by running the NumPy forward on a zero input (seeded weights) inside `count_ops()`
(DESIGN section 2), never computed from a formula; parameters are `model.count_params` of the
weight layout (BN weight and bias included, running statistics excluded).
"""
from __future__ import annotations

import numpy as np

from .config import STAGES, check_input_pixels, get_config
from .counting import count_ops
from .model import count_params


def counted_forward(config, input_size: tuple[int, int] | None = None, impl: str = "reference"):
    """The model of a config (seeded weights) and what its ops reported while it ran one forward
    on a zero input of `input_size` (default: the config's) inside `count_ops()`: the one walk
    that every per-stage count (this summary, the analyzer) reads. Sizes above
    `config.MAX_INPUT_PIXELS` (the forward's memory) are refused before any allocation."""
    from .weights import build

    cfg = get_config(config)
    H, W = input_size or cfg.input_size
    check_input_pixels((H, W))
    cfg.check_input_size((H, W))
    model = build(cfg, impl=impl)
    with count_ops() as counter:
        model(np.zeros((1, 3, H, W), np.float32))
    return model, counter


def model_summary(config, input_size: tuple[int, int] | None = None, shapes: dict | None = None) -> dict:
    """Params and MACs of a config at `input_size` (default: the config's), by stage and kind.

    Parameters are counted over `shapes` (key -> shape), a weights file's own tensors when given,
    else the config's layout; input sizes above
    `config.MAX_INPUT_PIXELS` (the forward's memory) are refused before any allocation.
    """
    cfg = get_config(config)
    H, W = input_size or cfg.input_size
    model, counter = counted_forward(cfg, (H, W))
    shapes = model.tensor_shapes_all() if shapes is None else shapes

    def params_under(prefix):
        return count_params({k: s for k, s in shapes.items() if k.startswith(prefix + ".")})

    rows = []
    for name in ("stem",) + STAGES + ("head",):
        st = cfg.stages.get(name)
        if st is not None:
            h, w = cfg.map_size(name, (H, W))
            wh, ww = cfg.window_of(name, (H, W))
            kinds = [k for k, on in (("window", st.window_attn), ("global", st.global_attn)) if on and st.depth]
            attn = " + ".join(kinds) or "-"
            grouping = (f"{wh}x{ww}" + (f" / {st.patch[0]}x{st.patch[1]}" if st.global_attn else "")) if kinds else "-"
            heads = st.channels // cfg.head_dim if kinds else 0
            row = dict(stage=name, map=f"{h}x{w}", channels=st.channels, blocks=st.depth,
                       attention=attn, window=grouping, heads=heads)
        elif name == "stem":
            h, w = cfg.map_size("s1", (H, W))
            row = dict(stage="stem", map=f"{H}x{W} -> {h}x{w}", channels=cfg.stem[-1], blocks=2,
                       attention="-", window="-", heads=0)
        else:
            h, w = cfg.output_size((H, W))
            row = dict(stage="head", map=f"{h}x{w}", channels=cfg.num_keypoints, blocks=1,
                       attention="-", window="-", heads=0)
        row["params"] = params_under(name)
        row["macs"] = counter.macs_under(name)
        rows.append(row)

    return {
        "config": cfg.name,
        "input": [H, W],
        "output": [cfg.num_keypoints, *cfg.output_size((H, W))],
        "params": count_params(shapes),
        "macs": counter.macs,
        "macs_by_kind": dict(counter.by_kind),
        "elementwise": dict(counter.elementwise),
        "stages": rows,
    }
