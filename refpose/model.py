"""WGNet (paper section 3.1, Fig. 1): stem, encoder s1..s4, decoder d1..d3 with skips, head.

The public forward takes and returns NCHW like other backends; inside, maps are NHWC.
One forward serves both dtypes: float32 is the fast path, float64 the oracle path.
"""
from __future__ import annotations

import numpy as np

from .config import MAX_PARAMS, TAPS, WGNetConfig, get_config
from .errors import ConfigError, InputShapeError
from .layers import Conv1x1, DecoderStage, DWSep, EncoderStage, Layer, Sequential, walk
from .ops import Ops

__all__ = ["TAPS", "WGNet"]
DTYPES = ("float32", "float64")


class WGNet(Layer):
    """The network as a tree of layers; weights are bound by `refpose.weights`."""

    def __init__(self, config: "str | WGNetConfig", dtype: str = "float32", impl: str = "fast"):
        cfg = get_config(config)
        if np.dtype(dtype).name not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        ops = Ops(impl)
        self.config, self.dtype, self.ops = cfg, np.dtype(dtype), ops
        self.trained: bool | None = None     # from the weights file's metadata
        self.source: str | None = None      # the weights file, when loaded from one
        c1, c2 = cfg.stem
        k = cfg.stem_kernel
        self.stem = Sequential([DWSep(ops, 3, c1, k, 2), DWSep(ops, c1, c2, k, 2)])
        cin = c2
        for stage in cfg.encoder:
            setattr(self, stage.name, EncoderStage(ops, cin, stage, cfg))
            cin = stage.channels
        skips = {"d1": cfg.stages["s3"], "d2": cfg.stages["s2"], "d3": cfg.stages["s1"]}
        for stage in cfg.decoder:
            setattr(self, stage.name, DecoderStage(ops, cin, skips[stage.name].channels, stage, cfg))
            cin = stage.channels
        self.head = Conv1x1(ops, cin, cfg.num_keypoints)
        for path, layer in walk(self):
            layer.path = path
        check_size(cfg, self.tensor_shapes_all())

    def tensor_shapes_all(self) -> dict[str, tuple]:
        """Every key of a weights file for this config, with its shape (PyTorch layouts)."""
        return {f"{path}.{k}" if path else k: shape
                for path, layer in walk(self) for k, shape in layer.tensor_shapes().items()}

    def taps(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Forward pass returning every stage's output (NCHW), in the order of TAPS."""
        return {k: _nchw(v) for k, v in self._run(x).items()}

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Heatmaps (N, K, H/4, W/4) for images (N, 3, H, W), normalised as in DESIGN section 1."""
        return _nchw(self._run(x)["head"])

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The forward pass of Fig. 1, keeping every stage's output (NHWC)."""
        x = self._check_input(x)
        x = x.transpose(0, 2, 3, 1)          # (N, H, W, 3)
        out = {}
        out["stem"] = x = self.stem(x)
        out["s1"] = s1 = self.s1(x)
        out["s2"] = s2 = self.s2(s1)
        out["s3"] = s3 = self.s3(s2)
        out["s4"] = s4 = self.s4(s3)
        out["d1"] = d = self.d1(s4, s3)
        out["d2"] = d = self.d2(d, s2)
        out["d3"] = d = self.d3(d, s1)
        out["head"] = self.head(d)
        return out

    def _check_input(self, x) -> np.ndarray:
        x = check_batch(x)
        H, W = x.shape[2:]
        try:
            self.config.check_input_size((H, W))
        except ConfigError as e:
            raise InputShapeError(f"expected (N, 3, H, W) with H, W the config can take: {e}") from None
        return np.ascontiguousarray(x, dtype=self.dtype)

    @property
    def num_params(self) -> int:
        """Trainable parameters (`count_params`)."""
        return count_params(self.tensor_shapes_all())

    def __repr__(self):
        return f"WGNet(config={self.config.name!r}, dtype={self.dtype.name}, impl={self.ops.name!r})"


def check_batch(x) -> np.ndarray:
    """`x` as an array if it is a float batch of images, NCHW with 3 channels and N >= 1;
    InputShapeError otherwise. The sizes are each model's to check."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputShapeError(f"expected an array of shape (N, 3, H, W), got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputShapeError(f"expected a float array, got {x.dtype}")
    if len(x) == 0:
        raise InputShapeError("expected a batch of at least one image, got N = 0")
    return x


def count_params(shapes: "dict[str, tuple]") -> int:
    """Parameters of a weight layout {key: shape}, as the paper's Table 4 counts them (DESIGN
    section 1): trainable tensors only, BN weight and bias included, BN running statistics excluded."""
    return sum(int(np.prod(shape)) for key, shape in shapes.items()
               if not key.endswith(("running_mean", "running_var", "num_batches_tracked")))


def check_size(cfg: WGNetConfig, shapes: "dict[str, tuple] | None" = None) -> None:
    """Refuse a config with more than MAX_PARAMS parameters, before anything is allocated: the
    layer tree knows every tensor's shape (`shapes`, else built here) and holds no weights."""
    shapes = WGNet(cfg, impl="reference").tensor_shapes_all() if shapes is None else shapes
    n = count_params(shapes)
    if n > MAX_PARAMS:
        raise ConfigError(f"config {cfg.name!r}: {n:,} parameters, more than the {MAX_PARAMS:,} refpose builds")


def tap_shapes(config, batch: int | None = None) -> dict[str, tuple]:
    """The NCHW shape of every tap for the config's input size (batch None: unknown)."""
    cfg = get_config(config)
    H, W = cfg.input_size
    shapes = {"stem": (cfg.stem[1], H // 4, W // 4)}
    for stage in cfg.encoder + cfg.decoder:
        shapes[stage.name] = (stage.channels,) + cfg.map_size(stage.name)
    shapes["head"] = (cfg.num_keypoints,) + cfg.output_size()
    return {k: (batch,) + s for k, s in shapes.items()}


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))      # (N, H, W, C) -> (N, C, H, W)
