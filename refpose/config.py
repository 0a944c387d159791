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
from .keypoints import DATASETS, Keypoints

STAGES = ("s1", "s2", "s3", "s4", "d1", "d2", "d3")


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
        wh, ww = self.stages[stage].window
        return min(wh, H), min(ww, W)

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
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "WGNetConfig":
        try:
            d = dict(d)
            d["encoder"] = tuple(StageConfig(**_stage_fields(s)) for s in d["encoder"])
            d["decoder"] = tuple(StageConfig(**_stage_fields(s)) for s in d["decoder"])
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"malformed config: {e}") from None


def _stage_fields(s: dict) -> dict:
    s = dict(s)
    for k in ("window", "patch"):
        if k in s:
            s[k] = tuple(s[k])
    return s


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
        wh, ww = min(s.window[0], mh), min(s.window[1], mw)
        if wh <= 0 or ww <= 0 or mh % wh or mw % ww:
            raise ConfigError(f"{where}: window {wh}x{ww} does not divide the {mh}x{mw} map")
        if s.global_attn:
            ph, pw = s.patch
            if ph <= 0 or pw <= 0 or wh % ph or ww % pw:
                raise ConfigError(f"{where}: patch {ph}x{pw} does not divide the {wh}x{ww} window")


# --- the named configurations (DESIGN section 1) -----------------------------------------
# Per dataset: input, keypoints, and the window (h, w) of every stage with its map at that input.
# MPII's square 256x256 input gives square maps (64x64 ... 8x8); its windows keep the COCO
# layout's proportions (a quarter of the map's side at 64, 8 pixels at 32 and 16, the whole
# 8x8 map at s4) and its patches are 4x4, the square counterpart of COCO's 4x3 (a 4x3 patch
# cannot tile a square window of even side 8 or 16 in width). Attention is defined as for COCO.
GEOMETRY = {
    "coco": dict(input_size=(256, 192), num_keypoints=17, patch=(4, 3), windows=dict(
        s1=(16, 12), s2=(8, 6), s3=(8, 6), s4=(8, 6), d1=(8, 6), d2=(8, 6), d3=(16, 12))),
        #  64x48     32x24      16x12      8x6        16x12      32x24      64x48
    "mpii": dict(input_size=(256, 256), num_keypoints=16, patch=(4, 4), windows=dict(
        s1=(16, 16), s2=(8, 8), s3=(8, 8), s4=(8, 8), d1=(8, 8), d2=(8, 8), d3=(16, 16))),
        #  64x64     32x32      16x16      8x8        16x16      32x32      64x64
}


def _wgnet(name: str, window_attn: bool, global_attn: bool, dataset: str = "coco") -> WGNetConfig:
    g = GEOMETRY[dataset]

    def st(stage, C, n, stride=2, glob=global_attn):
        return StageConfig(stage, C, n, window_attn, glob, g["windows"][stage], g["patch"], stride)

    return WGNetConfig(
        name=name, input_size=g["input_size"], stem=(16, 32),
        encoder=(
            st("s1", 96, 2, stride=1),
            st("s2", 160, 2),
            st("s3", 192, 2),
            st("s4", 256, 3, glob=False),   # the window is the whole map
        ),
        decoder=(
            st("d1", 192, 1),
            st("d2", 160, 1),
            st("d3", 96, 1),
        ),
        num_keypoints=g["num_keypoints"], dataset=dataset,
    )


def _tiny() -> WGNetConfig:
    """Small widths and input for fast tests. Exercises multi-head attention, a single
    global group (s3: the patch is the whole window), single-window maps (d1), a window
    clamped to the map (s4) and the decoder's skip projection (d2: 64 -> 32)."""
    return WGNetConfig(
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


CONFIGS = {
    "wgnet": lambda: _wgnet("wgnet", True, True),
    "wgnet-a": lambda: _wgnet("wgnet-a", True, False),
    "wgnet-b": lambda: _wgnet("wgnet-b", False, True),
    "wgnet-c": lambda: _wgnet("wgnet-c", False, False),
    "wgnet-mpii": lambda: _wgnet("wgnet-mpii", True, True, "mpii"),
    "wgnet-mpii-a": lambda: _wgnet("wgnet-mpii-a", True, False, "mpii"),
    "wgnet-mpii-b": lambda: _wgnet("wgnet-mpii-b", False, True, "mpii"),
    "wgnet-mpii-c": lambda: _wgnet("wgnet-mpii-c", False, False, "mpii"),
    "tiny": _tiny,
}

# Paper figures, for tables printed beside ours (Table 2: GFLOPs; Table 4: params in M).
PAPER_PARAMS_M = {"wgnet": 5.8, "wgnet-a": 4.9, "wgnet-b": 4.0, "wgnet-c": 3.2}
PAPER_GFLOPS = {"wgnet": 3.6}


def get_config(config: "str | WGNetConfig | dict") -> WGNetConfig:
    """A config from its name, a config object, or its dict form."""
    if isinstance(config, WGNetConfig):
        return config
    if isinstance(config, dict):
        return WGNetConfig.from_dict(config)
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ConfigError(f"unknown config {config!r}; known: {', '.join(CONFIGS)}")
        return CONFIGS[config]()
    raise ConfigError(f"a config is a name, a WGNetConfig or a dict, not {type(config).__name__}")
