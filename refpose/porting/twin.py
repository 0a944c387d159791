"""The PyTorch twin of WGNet: the same network as the NumPy model, written from DESIGN.md alone.

Optional (needs torch): used to export trained PyTorch checkpoints to the weights format and
as a second, independent implementation in parity tests (DESIGN section 3). Module attribute
paths are the weight keys of DESIGN section 3; the semantics are DESIGN section 1, eval mode.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import CONFIGS, TAPS, WGNetConfig, get_config
from ..errors import WeightsError
from ..model import check_size
from ..ops.geometry import check_grouping, clamp_window
from ..fileio import check_output_path, path_problem, unpacked_size
from ..weights import IGNORED_SUFFIXES, MAX_WEIGHTS_BYTES, check_tensors

BN_EPS = 1e-5   # BatchNorm2d and LayerNorm eps, DESIGN section 1


# --- geometry: window and global (patch-grid) grouping, paper section 3.2 and Fig. 2 ----------
def window_partition(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(N, H, W, C) -> (N·nh·nw, wh·ww, C): one group per wh×ww window (Swin), windows row-major."""
    N, H, W, C = x.shape
    nh, nw = H // wh, W // ww
    x = x.reshape(N, nh, wh, nw, ww, C)                    # (N, nh, wh, nw, ww, C)
    x = x.permute(0, 1, 3, 2, 4, 5)                        # (N, nh, nw, wh, ww, C)
    return x.reshape(N * nh * nw, wh * ww, C)              # (groups, tokens, C)


def window_reverse(groups: torch.Tensor, N: int, H: int, W: int, wh: int, ww: int) -> torch.Tensor:
    """Inverse of window_partition: (N·nh·nw, wh·ww, C) -> (N, H, W, C)."""
    C = groups.shape[-1]
    nh, nw = H // wh, W // ww
    x = groups.reshape(N, nh, nw, wh, ww, C)               # (N, nh, nw, wh, ww, C)
    x = x.permute(0, 1, 3, 2, 4, 5)                        # (N, nh, wh, nw, ww, C)
    return x.reshape(N, H, W, C)


def global_partition(x: torch.Tensor, wh: int, ww: int, ph: int, pw: int) -> torch.Tensor:
    """(N, H, W, C) -> (N·gh·gw, nh·nw·ph·pw, C), gh = wh/ph, gw = ww/pw.

    Each wh×ww window is cut into a gh×gw grid of ph×pw patches; group k = (a, b) gathers
    patch (a, b) — all its ph·pw pixels — of every window (paper section 3.2: "take the patch
    at the same position in each window and stitch together to form a new window").
    Pixel (h, w) lies in window (h // wh, w // ww) and in patch ((h % wh) // ph, (w % ww) // pw).
    Groups are ordered a-major; inside a group tokens are ordered (window row, window col,
    pixel row, pixel col) — the order is irrelevant to attention (no positional term).
    """
    N, H, W, C = x.shape
    nh, nw = H // wh, W // ww
    gh, gw = wh // ph, ww // pw
    x = x.reshape(N, nh, gh, ph, nw, gw, pw, C)            # h = (i·gh + a)·ph + r, w = (j·gw + b)·pw + s
    x = x.permute(0, 2, 5, 1, 4, 3, 6, 7)                  # (N, gh, gw, nh, nw, ph, pw, C)
    return x.reshape(N * gh * gw, nh * nw * ph * pw, C)    # (groups, tokens, C)


def global_reverse(groups: torch.Tensor, N: int, H: int, W: int,
                   wh: int, ww: int, ph: int, pw: int) -> torch.Tensor:
    """Inverse of global_partition: (N·gh·gw, nh·nw·ph·pw, C) -> (N, H, W, C)."""
    C = groups.shape[-1]
    nh, nw = H // wh, W // ww
    gh, gw = wh // ph, ww // pw
    x = groups.reshape(N, gh, gw, nh, nw, ph, pw, C)       # (N, gh, gw, nh, nw, ph, pw, C)
    x = x.permute(0, 3, 1, 5, 4, 2, 6, 7)                  # (N, nh, gh, ph, nw, gw, pw, C)
    return x.reshape(N, H, W, C)


# --- layers -----------------------------------------------------------------------------------
class ConvBN(nn.Module):
    """Conv2d(bias=False, padding=k//2) -> BatchNorm2d(eps=1e-5) -> ReLU6 if act (DESIGN section 1)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.act else x


class UpConvBN(nn.Module):
    """Decoder upsampling: ConvTranspose2d(cin, cout, 2, stride 2, bias=False) -> BN -> ReLU6
    (DESIGN section 1; weight layout (Cin, Cout, 2, 2), DESIGN section 3)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn(self.conv(x)))


class DWSep(nn.Module):
    """Depthwise-separable stem layer: depthwise k×k stride s, then pointwise; both with ReLU6."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 2):
        super().__init__()
        self.dw = ConvBN(cin, cin, k, stride, groups=cin)
        self.pw = ConvBN(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual (Sandler et al. 2018): 1×1 expand (omitted when e = 1) ->
    depthwise 3×3 stride s -> linear 1×1 project; x + f(x) iff s = 1 and cin = cout."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.expand = ConvBN(cin, hidden, 1) if expand != 1 else None
        self.dw = ConvBN(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvBN(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.dw(y))
        return x + y if self.residual else y


class Attention(nn.Module):
    """The residual branch Proj(MHSA(Group(LN(x)))), ungrouped, without the `x +` (DESIGN section 1).

    kind "window": one group per window (Swin); kind "global": group k is patch k of every
    window (paper section 3.2). heads = C / head_dim; qkv rows are [q; k; v] with head h owning
    channels h·head_dim … of each (Swin, timm). Takes and returns NCHW.
    """

    def __init__(self, channels: int, head_dim: int, kind: str,
                 window: tuple[int, int], patch: tuple[int, int]):
        super().__init__()
        if kind not in ("window", "global"):
            raise ValueError(f"attention kind must be 'window' or 'global', not {kind!r}")
        if channels % head_dim:
            raise ValueError(f"{channels} channels not divisible by the head size {head_dim}")
        self.kind, self.window, self.patch = kind, tuple(window), tuple(patch)
        self.heads, self.head_dim = channels // head_dim, head_dim
        self.norm = nn.LayerNorm(channels, eps=BN_EPS)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def group(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) -> (groups, tokens, C)."""
        _, H, W, _ = x.shape
        wh, ww = self._geometry(H, W)
        if self.kind == "window":
            return window_partition(x, wh, ww)
        return global_partition(x, wh, ww, *self.patch)

    def ungroup(self, groups: torch.Tensor, N: int, H: int, W: int) -> torch.Tensor:
        """(groups, tokens, C) -> (N, H, W, C)."""
        wh, ww = self._geometry(H, W)
        if self.kind == "window":
            return window_reverse(groups, N, H, W, wh, ww)
        return global_reverse(groups, N, H, W, wh, ww, *self.patch)

    def _geometry(self, H: int, W: int) -> tuple[int, int]:
        wh, ww = clamp_window(self.window, H, W)
        check_grouping(H, W, self.kind, (wh, ww), self.patch)
        return wh, ww

    def mhsa(self, t: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention inside each group (Vaswani et al. 2017): (G, T, C) -> (G, T, C)."""
        G, T, C = t.shape
        qkv = self.qkv(t)                                              # (G, T, 3C)
        qkv = qkv.reshape(G, T, 3, self.heads, self.head_dim)          # (G, T, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                           # each (G, heads, T, d)
        # q scaled before the product, as timm and Swin do: under float16 autocast q @ kT is a
        # float16 matmul, and unscaled scores overflow to inf (then NaN) head_dim^0.5 times sooner
        scores = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)     # (G, heads, T, T)
        o = scores.softmax(dim=-1) @ v                                 # (G, heads, T, d)
        o = o.transpose(1, 2).reshape(G, T, C)                         # (G, T, heads·d) = (G, T, C)
        return self.proj(o)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        t = self.norm(x.permute(0, 2, 3, 1))                           # (N, H, W, C)
        t = self.ungroup(self.mhsa(self.group(t)), N, H, W)            # (N, H, W, C)
        return t.permute(0, 3, 1, 2)                                   # (N, C, H, W)


class WNet(nn.Module):
    """WNet block (paper section 3.1, Fig. 2): window attention, global attention, then an
    inverted-residual FFN, each with its residual (DESIGN section 1)."""

    def __init__(self, channels: int, cfg: WGNetConfig, window: tuple[int, int], patch: tuple[int, int],
                 window_attn: bool, global_attn: bool):
        super().__init__()
        self.win = Attention(channels, cfg.head_dim, "window", window, patch) if window_attn else None
        self.glob = Attention(channels, cfg.head_dim, "global", window, patch) if global_attn else None
        self.ffn = InvertedResidual(channels, channels, 1, cfg.ffn_expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.win is not None:
            x = x + self.win(x)
        if self.glob is not None:
            x = x + self.glob(x)
        return self.ffn(x)


def _blocks(stage, cfg: WGNetConfig) -> nn.ModuleList:
    return nn.ModuleList(
        WNet(stage.channels, cfg, stage.window, stage.patch, stage.window_attn, stage.global_attn)
        for _ in range(stage.depth))


class SqueezeExcite(nn.Module):
    """SE channel attention (Hu et al. 2018): x · sigmoid(fc2(relu(fc1(mean_HW x)))),
    fc as 1×1 convs with bias, C -> C/r -> C (DESIGN section 1)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)                           # (N, C, 1, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class EncoderStage(nn.Module):
    """s1..s4: IR(cin, C, stride, e=ir_expand), then `depth` WNet(C) (paper Fig. 1)."""

    def __init__(self, cin: int, stage, cfg: WGNetConfig):
        super().__init__()
        self.ir = InvertedResidual(cin, stage.channels, stage.stride, cfg.ir_expand)
        self.blocks = _blocks(stage, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ir(x)
        for block in self.blocks:
            x = block(x)
        return x


class DecoderStage(nn.Module):
    """d1..d3: transposed-conv upsampling + skip from the encoder stage of the same size
    (1×1 ConvBN without activation only if channels differ), `depth` WNet(C), SE (paper Fig. 1)."""

    def __init__(self, cin: int, skip_channels: int, stage, cfg: WGNetConfig):
        super().__init__()
        C = stage.channels
        self.up = UpConvBN(cin, C)
        self.skip = ConvBN(skip_channels, C, 1, act=False) if skip_channels != C else None
        self.blocks = _blocks(stage, cfg)
        self.se = SqueezeExcite(C, cfg.se_reduction)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x) + (self.skip(skip) if self.skip is not None else skip)
        for block in self.blocks:
            x = block(x)
        return self.se(x)


# --- the model --------------------------------------------------------------------------------
class WGNetTwin(nn.Module):
    """WGNet (paper Fig. 1) in PyTorch: stem, encoder s1..s4, decoder d1..d3 with skips, 1×1 head.

    `WGNetTwin(config)` takes a config name, a WGNetConfig or its dict form. forward takes
    NCHW (N, 3, H, W) and returns heatmaps (N, num_keypoints, H/4, W/4). Use it in eval mode.
    """

    TAPS = TAPS

    def __init__(self, config: "str | WGNetConfig | dict"):
        super().__init__()
        cfg = self.config = get_config(config)
        check_size(cfg)                       # before torch allocates a weight of it
        c1, c2 = cfg.stem
        self.stem = nn.ModuleList([DWSep(3, c1, cfg.stem_kernel), DWSep(c1, c2, cfg.stem_kernel)])
        cin = c2
        for stage in cfg.encoder:
            setattr(self, stage.name, EncoderStage(cin, stage, cfg))
            cin = stage.channels
        skips = [s.channels for s in cfg.encoder[:3]][::-1]              # s3, s2, s1
        for stage, skip_channels in zip(cfg.decoder, skips):
            setattr(self, stage.name, DecoderStage(cin, skip_channels, stage, cfg))
            cin = stage.channels
        self.head = nn.Conv2d(cin, cfg.num_keypoints, 1)

    def forward_taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output (NCHW), in the order of TAPS; "head" is the heatmaps."""
        N, _, H, W = x.shape
        self.config.check_input_size((H, W))
        taps = {}
        for layer in self.stem:
            x = layer(x)
        taps["stem"] = x
        taps["s1"] = s1 = self.s1(x)
        taps["s2"] = s2 = self.s2(s1)
        taps["s3"] = s3 = self.s3(s2)
        taps["s4"] = s4 = self.s4(s3)
        taps["d1"] = d1 = self.d1(s4, s3)
        taps["d2"] = d2 = self.d2(d1, s2)
        taps["d3"] = d3 = self.d3(d2, s1)
        taps["head"] = self.head(d3)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_taps(x)["head"]

    @torch.no_grad()
    def load_numpy(self, tensors: "dict[str, np.ndarray]") -> None:
        """Strict load of numpy arrays in PyTorch layouts (DESIGN section 3), cast to the module's
        dtype. Strict as every refpose loader (`refpose.weights.check_tensors`): a missing or extra
        key (*.num_batches_tracked aside), a shape mismatch, a non-float array or a non-finite
        value is a WeightsError (a ValueError) naming the key."""
        state = {k: v for k, v in self.state_dict().items() if not k.endswith(IGNORED_SUFFIXES)}
        check_tensors(tensors, {k: tuple(v.shape) for k, v in state.items()}, "weights")
        for key, target in state.items():
            target.copy_(torch.from_numpy(np.ascontiguousarray(tensors[key])).to(target.dtype))


# --- export: PyTorch checkpoint -> weights file (DESIGN section 5, `refpose export`) ----------
def expected_shapes(config: "str | WGNetConfig | dict") -> dict[str, tuple[int, ...]]:
    """Key -> shape of the twin's state_dict for a config (num_batches_tracked left out)."""
    with torch.device("meta"):                                          # shapes only, no memory
        model = WGNetTwin(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith(IGNORED_SUFFIXES)}


def _mismatch(shapes: dict, expected: dict) -> list[str]:
    """What differs between a checkpoint's shapes and a config's, one phrase per key."""
    out = [f"missing {k}" for k in sorted(expected.keys() - shapes.keys())]
    out += [f"unexpected {k}" for k in sorted(shapes.keys() - expected.keys())]
    out += [f"{k} has shape {shapes[k]}, expected {expected[k]}"
            for k in sorted(shapes.keys() & expected.keys()) if shapes[k] != expected[k]]
    return out


def _summary(problems: list[str], limit: int = 3) -> str:
    more = f" and {len(problems) - limit} more" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


def load_torch_file(path, max_bytes: int, error=WeightsError, what: str = "PyTorch checkpoint"):
    """The object in a .pt/.pth file, unpickled with `weights_only` (tensors and plain containers,
    no code), after the path check and a bound on what it unpacks to (`fileio.unpacked_size`,
    `max_bytes`); any failure is `error` naming the file. `refpose export` and `refpose train
    --resume` read their files through it."""
    path = str(path)
    problem = path_problem(path, kind=f"a {what}")
    if problem:
        raise error(f"{path}: {problem}")
    try:
        size = unpacked_size(path)
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror or e}") from None
    if size > max_bytes:
        raise error(f"{path}: unpacks to {size:,} bytes, more than the {max_bytes:,} a {what} of refpose needs")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # the unpickler fails on foreign bytes with many exception types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise error(f"{path}: not a readable {what} ({reason})") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a .pt/.pth file: bare, or under a "state_dict" key."""
    obj = load_torch_file(path, MAX_WEIGHTS_BYTES)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise WeightsError(f"{path}: not a state_dict (a dict of named tensors, "
                           "bare or under 'state_dict')")
    return {k: v for k, v in obj.items() if not k.endswith(IGNORED_SUFFIXES)}


def _match_config(path: Path, shapes: dict, config) -> WGNetConfig:
    """The config whose twin has exactly these keys and shapes: the named one, or the one
    named config that fits."""
    if config is not None:
        cfg = get_config(config)
        problems = _mismatch(shapes, expected_shapes(cfg))
        if problems:
            raise WeightsError(f"{path}: does not match config {cfg.name!r}: {_summary(problems)}")
        return cfg
    tried = {name: _mismatch(shapes, expected_shapes(name)) for name in CONFIGS}
    fits = [name for name, problems in tried.items() if not problems]
    if len(fits) == 1:
        return get_config(fits[0])
    if len(fits) > 1:
        raise WeightsError(f"{path}: matches several configs ({', '.join(fits)}); name one")
    name, problems = min(tried.items(), key=lambda item: len(item[1]))
    raise WeightsError(f"{path}: matches no named config ({', '.join(CONFIGS)}); "
                       f"closest is {name!r}: {_summary(problems)}")


def read_checkpoint(checkpoint_path, config=None) -> tuple[dict[str, np.ndarray], WGNetConfig]:
    """A twin checkpoint (.pt/.pth state_dict) as float32 numpy arrays, and its config.

    The config is the one given (name or object), or else the one named config whose key set
    and shapes match exactly. Errors are WeightsError, one line naming the file.
    """
    path = Path(checkpoint_path)
    state = _read_state_dict(path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    cfg = _match_config(path, shapes, config)
    # float tensors as float32 (bfloat16 has no numpy dtype); others as they are, for the check to name
    tensors = {k: (v.detach().to(torch.float32) if v.is_floating_point() else v.detach()).contiguous().numpy()
               for k, v in state.items()}
    check_tensors(tensors, expected_shapes(cfg), str(path))
    return tensors, cfg


def export_checkpoint(checkpoint_path, out_path, config=None) -> WGNetConfig:
    """Write a twin checkpoint as a refpose weights file marked trained (`refpose export`).
    Returns the config used (see read_checkpoint)."""
    check_output_path(out_path, [checkpoint_path])
    tensors, cfg = read_checkpoint(checkpoint_path, config)
    from ..weights import save_weights  # the weights format lives there
    save_weights(out_path, tensors, cfg, trained=True)
    return cfg
