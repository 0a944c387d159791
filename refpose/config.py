"""WGNet configurations: frozen dataclasses, the named variants as data, validation at build time.

The paper (section 3.1, Fig. 1) gives the shape of the network but no widths or depths;
the tables here are the reading fixed in DESIGN.md section 1, which reproduces the
paper's parameter counts (Table 4) and GFLOPs (Table 2).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .errors import ConfigError
from .ops.geometry import clamp_window, tiling_problem
from .keypoints import DATASETS, Keypoints

STAGES = ("s1", "s2", "s3", "s4", "d1", "d2", "d3")
TAPS = ("stem",) + STAGES + ("head",)        # the named outputs of a forward pass, in order


@dataclass(frozen=True)
class StageConfig:
    """One encoder (s1..s4) or decoder (d1..d3) stage.

    `stride` is the stride of the encoder stage's leading inverted residual; decoder
    stages always upsample by 2 and ignore it. `window` is clamped to the map when the
    model is built (DESIGN section 1: wh = min(window_h, H)).
    """

    name: str
    channels: int
    depth: int
    window_attn: bool = True
    global_attn: bool = True
    window: tuple[int, int] = (8, 6)
    patch: tuple[int, int] = (4, 3)
    stride: int = 2


@dataclass(frozen=True)
class WGNetConfig:
    name: str
    input_size: tuple[int, int]          # (H, W) of the network input
    stem: tuple[int, int]                # output channels of the two DWSep layers
    encoder: tuple[StageConfig, ...]     # s1..s4
    decoder: tuple[StageConfig, ...]     # d1..d3
    num_keypoints: int = 17
    dataset: str = "coco"                # keypoint conventions (refpose.keypoints.DATASETS)
    head_dim: int = 32
    ir_expand: int = 6                   # encoder stage's leading inverted residual
    ffn_expand: int = 2                  # the inverted residual FFN inside WNet
    se_reduction: int = 4
    stem_kernel: int = 5
    stages: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "encoder", tuple(self.encoder))
        object.__setattr__(self, "decoder", tuple(self.decoder))
        object.__setattr__(self, "input_size", tuple(self.input_size))
        object.__setattr__(self, "stem", tuple(self.stem))
        object.__setattr__(self, "stages", {s.name: s for s in self.encoder + self.decoder})
        validate(self)

    @property
    def keypoints(self) -> Keypoints:
        """The keypoint conventions (names, flip pairs, skeleton) the head's outputs follow."""
        return DATASETS[self.dataset]

    # --- geometry -------------------------------------------------------------------
    def map_size(self, stage: str, input_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """(H, W) of the feature map a stage works on, for the given network input."""
        H, W = input_size or self.input_size
        f = 4                              # the stem: two stride-2 DWSep layers
        for s in self.encoder:
            f *= s.stride
            if s.name == stage:
                return H // f, W // f
        for s in self.decoder:
            f //= 2
            if s.name == stage:
                return H // f, W // f
        raise ConfigError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")

    def output_size(self, input_size: tuple[int, int] | None = None) -> tuple[int, int]:
        H, W = input_size or self.input_size
        return H // 4, W // 4

    def window_of(self, stage: str, input_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """The stage's window, clamped to its map."""
        H, W = self.map_size(stage, input_size)
        return clamp_window(self.stages[stage].window, H, W)

    def total_stride(self) -> int:
        f = 4
        for s in self.encoder:
            f *= s.stride
        return f

    def check_input_size(self, input_size: tuple[int, int]) -> None:
        """Raise ConfigError when the network cannot run at this input size."""
        validate(self, input_size)

    # --- serialisation --------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("stages")
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> "WGNetConfig":
        """A config from its dict (JSON) form, e.g. a weights file's metadata: every field is
        checked for its type and range first, so that a bad file is a ConfigError naming the field."""
        name = d.get("name") if isinstance(d, dict) else None
        where = f"config {name[:40]!r}" if isinstance(name, str) else "config"
        _check_fields(d, CONFIG_FIELDS, where)
        stages = {}
        for part in ("encoder", "decoder"):
            stages[part] = []
            for i, s in enumerate(d[part]):
                _check_fields(s, STAGE_FIELDS, f"{where}, {part}[{i}]")
                stages[part].append(StageConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()}))
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        check_input_pixels(fields["input_size"], f"{where}: field 'input_size'")
        return cls(**dict(fields, **stages))


# --- the dict (JSON) form: what each field may hold -------------------------------------------
# Bounds keep a config from a file within what a CPU reference builds: no field of a named
# config comes near them (widths <= 256, depths <= 3, inputs 256x192).
MAX_WIDTH = 4096                       # channels, stem widths, head size, keypoints, sizes
MAX_DEPTH = 64                         # WNet blocks in a stage
MAX_PARAMS = 200_000_000               # 35x wgnet; 800 MB of float32 weights
# Global attention's score matrices grow with the square of the input area: wgnet at 1024x768
# (16x the named configs' 256x192) peaked at 3.9 GB and took minutes; at 512x384 it peaks at 0.4 GB.
MAX_INPUT_PIXELS = 512 * 384
CONFIG_FIELDS = {"name": "name", "input_size": "pair", "stem": "pair", "encoder": "stages", "decoder": "stages",
                 "num_keypoints": "count", "head_dim": "count", "ir_expand": "count", "ffn_expand": "count",
                 "se_reduction": "count", "stem_kernel": "odd", "dataset": "name"}
STAGE_FIELDS = {"name": "name", "channels": "count", "depth": "depth", "window_attn": "flag",
                "global_attn": "flag", "window": "pair", "patch": "pair", "stride": "count"}
OPTIONAL = {"num_keypoints", "dataset", "head_dim", "ir_expand", "ffn_expand", "se_reduction", "stem_kernel",
            "window_attn", "global_attn", "window", "patch", "stride"}


def check_input_pixels(input_size: tuple[int, int], what: str = "input") -> None:
    """Refuse an input size above MAX_INPUT_PIXELS, before anything of that size is allocated."""
    H, W = input_size
    if H * W > MAX_INPUT_PIXELS:
        raise ConfigError(f"{what} {H}x{W} is {H * W:,} pixels, more than the {MAX_INPUT_PIXELS:,} (512x384) "
                          "refpose runs at")


def _check_fields(d, fields: dict, where: str) -> None:
    """Raise ConfigError unless `d` is a dict whose keys are `fields` (some optional), each of its kind."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {_kind(d)}")
    unknown = sorted(map(str, set(d) - set(fields)))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; fields are {', '.join(fields)}")
    for key, kind in fields.items():
        if key not in d:
            if key in OPTIONAL:
                continue
            raise ConfigError(f"{where}: missing field {key!r}")
        problem = _field_problem(d[key], kind)
        if problem:
            raise ConfigError(f"{where}: field {key!r} {problem}")


def _field_problem(v, kind: str) -> str | None:
    """What is wrong with value `v` for a field of this kind, or None."""
    def is_int(x):
        return isinstance(x, int) and not isinstance(x, bool)

    if kind == "name":
        return None if isinstance(v, str) and 0 < len(v) <= 100 else f"must be a name (1 to 100 characters), got {_kind(v)}"
    if kind == "flag":
        return None if isinstance(v, bool) else f"must be true or false, got {_kind(v)}"
    if kind == "stages":
        return None if isinstance(v, (list, tuple)) else f"must be a list of stages, got {_kind(v)}"
    if kind == "pair":
        if not (isinstance(v, (list, tuple)) and len(v) == 2):
            return f"must be a pair of integers [a, b], got {_kind(v)}"
        if any(_field_problem(x, "count") for x in v):
            return f"must be a pair of integers between 1 and {MAX_WIDTH}, got [{_kind(v[0])}, {_kind(v[1])}]"
        return None
    lo = 0 if kind == "depth" else 1
    hi = MAX_DEPTH if kind == "depth" else MAX_WIDTH
    if not is_int(v):
        return f"must be an integer, got {_kind(v)}"
    if not lo <= v <= hi:
        return f"must be between {lo} and {hi}, got {_kind(v)}"
    if kind == "odd" and v % 2 == 0:
        return f"must be odd (the convolution pads k // 2 on each side), got {v}"
    return None


def _kind(v) -> str:
    """A short description of a JSON value for messages (never its whole text)."""
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, (int, float)):
        text = repr(v)
        return text if len(text) <= 20 else f"a number of {len(text)} digits"
    if isinstance(v, str):
        return f"the string {v[:20]!r}" + ("..." if len(v) > 20 else "")
    return {dict: "an object", list: "a list", tuple: "a list"}.get(type(v), type(v).__name__)


def validate(cfg: WGNetConfig, input_size: tuple[int, int] | None = None) -> None:
    """Reject a config that cannot run, naming the stage at fault (DESIGN section 1)."""
    H, W = input_size or cfg.input_size
    names = tuple(s.name for s in cfg.encoder + cfg.decoder)
    if names != STAGES:
        raise ConfigError(f"config {cfg.name!r}: stages must be {', '.join(STAGES)}, got {', '.join(names)}")
    if cfg.dataset not in DATASETS:
        raise ConfigError(f"config {cfg.name!r}: unknown dataset {cfg.dataset!r}; known: {', '.join(DATASETS)}")
    if cfg.num_keypoints != DATASETS[cfg.dataset].num_joints:
        raise ConfigError(f"config {cfg.name!r}: {cfg.num_keypoints} keypoints, but {cfg.dataset} has "
                          f"{DATASETS[cfg.dataset].num_joints}")
    if len(cfg.stem) != 2 or min(cfg.stem) <= 0:
        raise ConfigError(f"config {cfg.name!r}: stem needs two positive widths, got {cfg.stem}")
    for s in cfg.encoder[1:]:
        if s.stride != 2:
            raise ConfigError(f"config {cfg.name!r}, stage {s.name}: stride must be 2 "
                              "(the decoder upsamples by 2 at each stage)")
    if cfg.encoder[0].stride != 1:
        raise ConfigError(f"config {cfg.name!r}, stage s1: stride must be 1")
    f = cfg.total_stride()
    if H <= 0 or W <= 0 or H % f or W % f:
        raise ConfigError(f"config {cfg.name!r}: input {H}x{W} must be a positive multiple of {f} "
                          "in both height and width")
    for s in cfg.encoder + cfg.decoder:
        where = f"config {cfg.name!r}, stage {s.name}"
        if s.channels <= 0 or s.depth < 0:
            raise ConfigError(f"{where}: channels must be positive and depth non-negative")
        if s.channels % cfg.se_reduction and s.name.startswith("d"):
            raise ConfigError(f"{where}: {s.channels} channels not divisible by the SE reduction {cfg.se_reduction}")
        if not (s.window_attn or s.global_attn) or s.depth == 0:
            continue
        if s.channels % cfg.head_dim:
            raise ConfigError(f"{where}: {s.channels} channels not divisible by the head size {cfg.head_dim}")
        mh, mw = cfg.map_size(s.name, (H, W))
        problem = tiling_problem(mh, mw, "global" if s.global_attn else "window",
                                 clamp_window(s.window, mh, mw), s.patch)
        if problem:
            raise ConfigError(f"{where}: {problem}")


# --- the named configurations (DESIGN section 1) -----------------------------------------
# Per dataset: input, keypoints, and the window (h, w) of every stage with its map at that input.
# MPII's square 256x256 input gives square maps (64x64 ... 8x8); its windows keep the COCO
# layout's proportions (a quarter of the map's side at 64, 8 pixels at 32 and 16, the whole
# 8x8 map at s4) and its patches are 4x4, the square counterpart of COCO's 4x3 (a 4x3 patch
# cannot tile a square window of even side 8 or 16 in width). Attention is defined as for COCO.
GEOMETRY = {
    "coco": dict(input_size=(256, 192), patch=(4, 3), windows=dict(
        s1=(16, 12), s2=(8, 6), s3=(8, 6), s4=(8, 6), d1=(8, 6), d2=(8, 6), d3=(16, 12))),
        #  64x48     32x24      16x12      8x6        16x12      32x24      64x48
    "mpii": dict(input_size=(256, 256), patch=(4, 4), windows=dict(
        s1=(16, 16), s2=(8, 8), s3=(8, 8), s4=(8, 8), d1=(8, 8), d2=(8, 8), d3=(16, 16))),
        #  64x64     32x32      16x16      8x8        16x16      32x32      64x64
}


# The WGNet layout of DESIGN section 1: (stage, channels, WNet blocks, stride of the encoder
# stage's leading inverted residual; decoder stages upsample by 2). s4's window is its whole map,
# so it has no global attention in any variant.
WGNET_STEM = (16, 32)
WGNET_STAGES = (("s1", 96, 2, 1), ("s2", 160, 2, 2), ("s3", 192, 2, 2), ("s4", 256, 3, 2),
                ("d1", 192, 1, 2), ("d2", 160, 1, 2), ("d3", 96, 1, 2))
NO_GLOBAL = ("s4",)

# Small widths and input for fast tests, not a paper variant. It exercises multi-head attention,
# a single global group (s3: the patch is the whole window), single-window maps (d1), a window
# clamped to the map (s4) and the decoder's skip projection (d2: 64 -> 32).
TINY = WGNetConfig(
    name="tiny", input_size=(128, 96), stem=(8, 16),
    encoder=(
        StageConfig("s1", 32, 1, True, True, (8, 6), (4, 3), 1),    # 32x24
        StageConfig("s2", 64, 1, True, True, (8, 6), (4, 3), 2),    # 16x12
        StageConfig("s3", 64, 1, True, True, (4, 3), (4, 3), 2),    # 8x6
        StageConfig("s4", 96, 1, True, False, (8, 6), (4, 3), 2),   # 4x3, window clamped
    ),
    decoder=(
        StageConfig("d1", 64, 1, True, True, (8, 6), (4, 3)),       # 8x6
        StageConfig("d2", 32, 1, True, True, (8, 6), (4, 3)),       # 16x12, skip 64 -> 32
        StageConfig("d3", 32, 1, True, True, (16, 12), (4, 3)),     # 32x24
    ),
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)     # input normalisation, RGB in [0, 1] (DESIGN section 1; HRNet, MMPose)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Variant:
    """One named config as data: which layers it has, and what travels with it (the input
    normalisation, the paper's figures, its default weights file), as timm keeps `default_cfgs`."""

    name: str
    window_attn: bool = True
    global_attn: bool = True
    dataset: str = "coco"                 # keypoints, input size, windows and patches (GEOMETRY)
    layout: str = "wgnet"                 # "wgnet" (WGNET_STAGES) or "tiny" (TINY)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    paper_params_m: float | None = None   # the paper's Table 4 (millions)
    paper_gflops: float | None = None     # the paper's Table 2 (GMAC, 1 FLOP = 1 MAC)

    @property
    def weights_file(self) -> str:
        """The file name `refpose infer` looks for in `weights/` when it is given no weights."""
        return f"{self.name}.safetensors"

    def config(self) -> WGNetConfig:
        if self.layout == "tiny":
            return TINY
        g = GEOMETRY[self.dataset]
        stages = [StageConfig(name, C, n, self.window_attn, self.global_attn and name not in NO_GLOBAL,
                              g["windows"][name], g["patch"], stride) for name, C, n, stride in WGNET_STAGES]
        return WGNetConfig(name=self.name, input_size=g["input_size"], stem=WGNET_STEM, encoder=tuple(stages[:4]),
                           decoder=tuple(stages[4:]), num_keypoints=DATASETS[self.dataset].num_joints,
                           dataset=self.dataset)


VARIANTS = (
    Variant("wgnet", paper_params_m=5.8, paper_gflops=3.6),
    Variant("wgnet-a", global_attn=False, paper_params_m=4.9),       # Table 4: no global attention
    Variant("wgnet-b", window_attn=False, paper_params_m=4.0),       # no window attention
    Variant("wgnet-c", window_attn=False, global_attn=False, paper_params_m=3.2),   # neither
    Variant("wgnet-mpii", dataset="mpii"),
    Variant("wgnet-mpii-a", global_attn=False, dataset="mpii"),
    Variant("wgnet-mpii-b", window_attn=False, dataset="mpii"),
    Variant("wgnet-mpii-c", window_attn=False, global_attn=False, dataset="mpii"),
    Variant("tiny", layout="tiny"),
)
CONFIGS = {v.name: v for v in VARIANTS}


def variant_of(name: str) -> Variant:
    """The record of the named config `name`; a config of another name gets the defaults
    (ImageNet normalisation, no paper figures)."""
    return CONFIGS.get(name) or Variant(name)


def get_config(config: "str | WGNetConfig | dict") -> WGNetConfig:
    """A config from its name, a config object, or its dict form."""
    if isinstance(config, WGNetConfig):
        return config
    if isinstance(config, dict):
        return WGNetConfig.from_dict(config)
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ConfigError(f"unknown config {config!r}; known: {', '.join(CONFIGS)}")
        return CONFIGS[config].config()
    raise ConfigError(f"a config is a name, a WGNetConfig or a dict, not {type(config).__name__}")
