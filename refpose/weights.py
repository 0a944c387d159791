"""Weight files: reading, strict checking, writing, seeded initialisation (DESIGN section 3).

A weights file is safetensors (or .npz with the same keys) in PyTorch layouts, with the
metadata `format`, `config` (the config as JSON) and `trained`. Loading is strict: every
key the config needs, no other, each of the right shape, float and finite. BatchNorm is
folded into the preceding convolution by the layers when they bind, in the compute dtype.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import MAX_PARAMS, WGNetConfig, get_config
from .errors import ConfigError, WeightsError
from .fileio import check_key_set, path_problem, read_npz, write_atomic
from .layers import walk
from .model import WGNet

FORMAT = "refpose-weights/1"
INT8_FORMAT = "refpose-int8/1"     # refpose.quant.fileformat.FORMAT: int8 files (docs/int8.md)
ASSETS = Path(__file__).resolve().parent / "assets"
# weights that ship inside the package, by name: `--weights tiny-synthetic` works from any folder
SHIPPED = {"tiny-synthetic": "tiny-synthetic.safetensors"}     # the tiny config trained on `refpose synth` figures
IGNORED_SUFFIXES = ("num_batches_tracked",)
# the largest file a config within MAX_PARAMS needs: every tensor in float64, plus the header
MAX_WEIGHTS_BYTES = 8 * MAX_PARAMS + 2 ** 20


@dataclass
class WeightsFile:
    tensors: dict[str, np.ndarray]
    config: WGNetConfig | None
    trained: bool | None
    path: str
    meta: dict = None          # the metadata strings as read (format, config, trained, ...)

    @property
    def int8(self) -> bool:
        """Whether this is an int8 file (`refpose quantize`), which `refpose.quant` loads."""
        return (self.meta or {}).get("format") == INT8_FORMAT

    def config_for(self, config=None) -> WGNetConfig:
        """The config to load this file with: the one named (which must match the file's, if
        it carries one), else the file's own."""
        if config is not None:
            cfg = get_config(config)
            if self.config is not None and self.config != cfg:
                raise WeightsError(f"{self.path}: the file is for config {self.config.name!r}, not {cfg.name!r}")
            return cfg
        if self.config is None:
            raise WeightsError(f"{self.path}: the file has no config in its metadata; name one (config=...)")
        return self.config


def weights_path(weights: "str | os.PathLike") -> str:
    """The file `weights` names: a path, or the name of weights that ship with refpose (SHIPPED),
    which works from any folder; a path that exists wins over a name."""
    path = os.fspath(weights)
    if path in SHIPPED and not os.path.lexists(path):
        return str(ASSETS / SHIPPED[path])
    return str(path)


def read_weights(path: "str | os.PathLike") -> WeightsFile:
    """Read tensors and metadata from a .safetensors or .npz file (a path, or the name of shipped
    weights: `weights_path`), checking nothing yet."""
    path = weights_path(path)
    problem = path_problem(path, kind="a weights file")
    if problem == "no such file":
        problem = f"no such weights file (nor the name of weights shipped with refpose: {', '.join(SHIPPED)})"
    if problem:
        raise WeightsError(f"{path}: {problem}")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise WeightsError(f"{path}: cannot read: {e.strerror or e}") from None
    if size > MAX_WEIGHTS_BYTES:
        raise WeightsError(f"{path}: {size:,} bytes, more than the weights of any config refpose builds")
    try:
        if head[:2] == b"PK":
            tensors, meta = _read_npz(path)
        else:
            tensors, meta = _read_safetensors(path)
    except WeightsError:
        raise
    except Exception as e:  # the readers raise many types on a damaged file
        raise WeightsError(f"{path}: not a readable weights file (safetensors or .npz): "
                           f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")) from None
    config = None
    if meta.get("config"):
        try:
            config = get_config(json.loads(meta["config"]))
        except (ValueError, RecursionError, ConfigError) as e:    # ValueError: JSONDecodeError, huge ints
            raise WeightsError(f"{path}: the config in the metadata is not valid: {e}") from None
    trained = meta.get("trained")
    if trained is not None:                 # a JSON boolean, as written by save_weights; absent = unknown
        if trained not in ("true", "false"):
            raise WeightsError(f"{path}: metadata 'trained' must be true or false, got {str(trained)[:40]!r}")
        trained = trained == "true"
    return WeightsFile(tensors, config, trained, path, meta)


def float_file(wf: WeightsFile) -> WeightsFile:
    """`wf` if it holds float weights; WeightsError if it is an int8 file (a float file is needed)."""
    if wf.int8:
        raise WeightsError(f"{wf.path}: an int8 weights file (format {INT8_FORMAT}), where float weights "
                           "are needed")
    return wf


def _read_safetensors(path: str):
    from safetensors import safe_open

    tensors = {}
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    return tensors, meta


def _read_npz(path: str):
    tensors, meta = {}, {}
    for k, a in read_npz(path, "weights file", MAX_WEIGHTS_BYTES, WeightsError).items():
        if k in ("format", "config", "trained") and a.ndim == 0 and a.dtype.kind in "US":
            meta[k] = str(a)
        else:
            tensors[k] = a
    return tensors, meta


def check_tensors(tensors: dict[str, np.ndarray], expected: dict[str, tuple], source: str) -> None:
    """Strict check: same key set, same shapes, float dtype, finite values."""
    check_key_set({k: a for k, a in tensors.items() if not k.endswith(IGNORED_SUFFIXES)}, expected, source)
    for k, shape in expected.items():
        a = tensors[k]
        if tuple(a.shape) != tuple(shape):
            raise WeightsError(f"{source}: key {k!r} has shape {tuple(a.shape)}, expected {tuple(shape)}")
        if not np.issubdtype(a.dtype, np.floating):
            raise WeightsError(f"{source}: key {k!r} has dtype {a.dtype}, expected a float dtype")
        if not np.isfinite(a).all():
            raise WeightsError(f"{source}: key {k!r} (shape {tuple(a.shape)}) has non-finite values")


def from_tensors(tensors: dict[str, np.ndarray], config, dtype: str = "float32",
                 impl: str = "fast", source: str = "weights") -> WGNet:
    """A model with these tensors bound (strictly checked, BN folded in `dtype`)."""
    model = WGNet(config, dtype, impl)
    check_tensors(tensors, model.tensor_shapes_all(), source)
    for path, layer in walk(model):
        prefix = f"{path}." if path else ""
        layer.bind(lambda k, p=prefix: _frozen(tensors[p + k], model.dtype))
    return model


def _frozen(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The model's own read-only copy of a tensor: the caller's dict stays the caller's, and the
    fast path may keep what it derives from a weight (its packed panels) for as long as the
    weight lives."""
    a = np.array(a, dtype=dtype, order="C", copy=True)
    a.setflags(write=False)
    return a


def load(weights: "str | os.PathLike", config=None, dtype: str = "float32", impl: str = "fast") -> WGNet:
    """Load a weights file; `config` is needed only when the file does not carry one. An int8
    file (`refpose quantize`) gives the int8 network (`refpose.quant`), whatever `dtype` says."""
    wf = read_weights(weights)
    if wf.int8:
        from .quant.fileformat import int8_model

        model = int8_model(wf.tensors, wf.meta, wf.config_for(config), wf.path, impl)
        model.trained = wf.trained
        return model
    model = from_tensors(wf.tensors, wf.config_for(config), dtype, impl, source=wf.path)
    model.trained = wf.trained
    model.source = wf.path
    return model


def build(config, seed: int = 0, dtype: str = "float32", impl: str = "fast") -> WGNet:
    """A model with seeded, untrained weights (see `init_weights`)."""
    cfg = get_config(config)
    model = from_tensors(init_weights(cfg, seed), cfg, dtype, impl, source=f"init(seed={seed})")
    model.trained = False
    return model


def init_weights(config, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded untrained weights (float32, PyTorch layouts) with non-trivial statistics.

    Convs and linears are He-normal over their fan-in (with a smaller gain on the last
    layer of each residual branch, so activations stay in range through the depth);
    BatchNorm and LayerNorm scales, shifts and running statistics are drawn away from
    their defaults, so that a backend that ignores one of them disagrees with refpose.
    """
    cfg = get_config(config)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"the seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in WGNet(cfg, impl="reference").tensor_shapes_all().items():
        leaf = key.rsplit(".", 1)[-1]
        n = int(np.prod(shape))
        if leaf == "running_var":
            a = rng.uniform(0.5, 2.0, n)
        elif leaf == "running_mean":
            a = rng.normal(0.0, 0.2, n)
        elif key.endswith(("bn.weight", "norm.weight")):
            a = rng.uniform(0.6, 1.4, n)
        elif leaf == "bias":
            a = rng.normal(0.0, 0.05, n)
        else:
            fan_in = _fan_in(key, shape)
            gain = 0.5 if key.endswith(("project.conv.weight", "proj.weight")) else 1.0
            a = rng.normal(0.0, gain * np.sqrt(2.0 / fan_in), n)
        out[key] = a.reshape(shape).astype(np.float32)
    return out


def _fan_in(key: str, shape: tuple) -> int:
    if key.endswith("up.conv.weight"):        # ConvTranspose2d (Cin, Cout, k, k): each output sees Cin taps
        return shape[0]
    return int(np.prod(shape[1:]))             # Conv2d (Cout, Cin/g, k, k), Linear (out, in)


def save_weights(path: "str | os.PathLike", tensors: dict[str, np.ndarray], config, trained: bool,
                 extra: "dict[str, str] | None" = None) -> None:
    """Write a weights file atomically (.npz by extension, otherwise safetensors).

    `extra`: more metadata strings for a safetensors file (e.g. what the weights were trained
    on); they cannot override `format`, `config` and `trained`, and .npz keeps only those three."""
    cfg = get_config(config)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items() if not k.endswith(IGNORED_SUFFIXES)}
    check_tensors(tensors, WGNet(cfg, impl="reference").tensor_shapes_all(), str(path))
    meta = {**{str(k): str(v) for k, v in (extra or {}).items()},
            "format": FORMAT, "config": cfg.to_json(), "trained": "true" if trained else "false"}
    if Path(path).suffix == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, **tensors, **{k: np.array(meta[k]) for k in ("format", "config", "trained")})
        data = buffer.getvalue()
    else:
        from safetensors.numpy import save
        data = _sorted_metadata(save(tensors, metadata=meta))
    write_atomic(path, data)


def _sorted_metadata(data: bytes) -> bytes:
    """safetensors bytes with the metadata keys sorted, so the same weights give the same file.

    safetensors writes its metadata map in hash order, which changes from call to call
    (safetensors issue #584). The header is 8 bytes of length (little-endian), then JSON
    padded with spaces to a multiple of 8; tensor data follows, addressed by offsets.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]
