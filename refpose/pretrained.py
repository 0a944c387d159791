"""The model a command runs when it is not given one: a weights file found by name, else seeded weights."""
from __future__ import annotations

from pathlib import Path

from .config import get_config, variant_of

DEFAULT_CONFIG = "wgnet"


def default_weights_path(config=DEFAULT_CONFIG) -> Path | None:
    """`weights/<the config's weights file>` (`weights/wgnet.safetensors` for wgnet: `Variant.weights_file`),
    looked for in the current directory, then in the source checkout beside the package; None
    when neither exists. A current directory that was deleted is passed over."""
    name = variant_of(get_config(config).name).weights_file
    for root in (_cwd(), Path(__file__).resolve().parent.parent):
        path = None if root is None else root / "weights" / name
        if path is not None and path.is_file():
            return path
    return None


def _cwd() -> Path | None:
    try:
        return Path.cwd()
    except OSError:                   # the current directory was deleted (getcwd: ENOENT)
        return None


def default_model(weights=None, config=None, dtype: str = "float32"):
    """The model to run: `weights` if given; else the default weights file of the config (see
    `default_weights_path`) if there is one; else seeded untrained weights (`refpose.build`,
    seed 0). `model.trained` tells which (False for untrained, None when the file does not say)."""
    from .weights import build, load

    if weights is not None:
        return load(weights, config, dtype)
    cfg = get_config(config if config is not None else DEFAULT_CONFIG)
    path = default_weights_path(cfg)
    if path is not None:
        return load(path, cfg, dtype)
    return build(cfg, seed=0, dtype=dtype)
