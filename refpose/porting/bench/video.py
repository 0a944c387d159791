"""`python -m refpose.porting.bench.video`: frames per second of `refpose infer` on a video, with and without a detector.

The clip is made here (640x360, moving shapes on a gradient, MPEG-4). The detector is a
randomly initialised network of YOLOX-nano's shape (Ge et al. 2021, YOLOX `yolox_nano.py`:
depth 0.33, width 0.25, depthwise convs, 416x416 input, 80 classes; about 0.9 M parameters and
1.1 GFLOPs), exported to ONNX as YOLOX exports it (raw grid output (1, 3549, 85)), so its cost is
that of the real nano; no trained weights are involved. Its objectness and person score are fixed
at two cells of the stride-32 grid, so that every frame yields two persons, as a trained detector
would on a clip of two people. Needs torch and onnx (the `onnx` extra).

Prints one line per run: config, detector or not, frames, seconds, frames/s. Timings depend on
the machine and its load; nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

CLIP_SIZE = (640, 360)
YOLOX_INPUT = 416
PLANTED = ((6, 4), (6, 8))          # (row, column) of the stride-32 cells that hold the two persons


def make_clip(path: Path, frames: int, fps: float = 25.0) -> Path:
    W, H = CLIP_SIZE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    xs, ys = np.meshgrid(np.linspace(0, 255, W), np.linspace(0, 255, H))
    for i in range(frames):
        frame = np.stack([xs, ys, np.full_like(xs, 128)], axis=-1).astype(np.uint8)
        for k, colour in enumerate(((40, 40, 200), (200, 60, 40))):
            x = 100 + 300 * k + 3 * i
            cv2.rectangle(frame, (x, 60), (x + 90, 300), colour, -1)
        writer.write(frame)
    writer.release()
    return path


def yolox_nano_shaped():
    """A YOLOX-nano-shaped torch module with random weights, forward as YOLOX's export (decode off)."""
    import torch
    from torch import nn

    def conv(cin, cout, k=1, s=1, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.SiLU())

    def dwconv(cin, cout, k=3, s=1):                       # YOLOX DWConv: depthwise k x k, then pointwise
        return nn.Sequential(conv(cin, cin, k, s, groups=cin), conv(cin, cout))

    class Bottleneck(nn.Module):
        def __init__(self, c, shortcut):
            super().__init__()
            self.body, self.shortcut = nn.Sequential(conv(c, c), dwconv(c, c)), shortcut

        def forward(self, x):
            return x + self.body(x) if self.shortcut else self.body(x)

    class CSP(nn.Module):
        def __init__(self, cin, cout, n, shortcut=True):
            super().__init__()
            h = cout // 2
            self.a, self.b, self.out = conv(cin, h), conv(cin, h), conv(2 * h, cout)
            self.m = nn.Sequential(*[Bottleneck(h, shortcut) for _ in range(n)])

        def forward(self, x):
            return self.out(torch.cat([self.m(self.a(x)), self.b(x)], 1))

    class SPP(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.a, self.out = conv(cin, cin // 2), conv(cin // 2 * 4, cout)
            self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))

        def forward(self, x):
            x = self.a(x)
            return self.out(torch.cat([x] + [p(x) for p in self.pools], 1))

    class Nano(nn.Module):
        def __init__(self, classes=80):
            super().__init__()
            self.stem = conv(12, 16, 3)                                           # Focus: space-to-depth, then conv
            self.dark2 = nn.Sequential(dwconv(16, 32, 3, 2), CSP(32, 32, 1))
            self.dark3 = nn.Sequential(dwconv(32, 64, 3, 2), CSP(64, 64, 3))
            self.dark4 = nn.Sequential(dwconv(64, 128, 3, 2), CSP(128, 128, 3))
            self.dark5 = nn.Sequential(dwconv(128, 256, 3, 2), SPP(256, 256), CSP(256, 256, 1, False))
            self.lateral0, self.c3_p4 = conv(256, 128), CSP(256, 128, 1, False)   # PAFPN
            self.reduce1, self.c3_p3 = conv(128, 64), CSP(128, 64, 1, False)
            self.bu2, self.c3_n3 = dwconv(64, 64, 3, 2), CSP(128, 128, 1, False)
            self.bu1, self.c3_n4 = dwconv(128, 128, 3, 2), CSP(256, 256, 1, False)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.stems = nn.ModuleList(conv(c, 64) for c in (64, 128, 256))       # decoupled head, width 64
            self.cls_convs = nn.ModuleList(nn.Sequential(dwconv(64, 64), dwconv(64, 64)) for _ in range(3))
            self.reg_convs = nn.ModuleList(nn.Sequential(dwconv(64, 64), dwconv(64, 64)) for _ in range(3))
            self.cls_preds = nn.ModuleList(nn.Conv2d(64, classes, 1) for _ in range(3))
            self.reg_preds = nn.ModuleList(nn.Conv2d(64, 4, 1) for _ in range(3))
            self.obj_preds = nn.ModuleList(nn.Conv2d(64, 1, 1) for _ in range(3))
            n = YOLOX_INPUT // 32
            plant = torch.full((1, 1, n, n), -30.0)                              # two confident persons
            for r, c in PLANTED:
                plant[0, 0, r, c] = 30.0
            self.register_buffer("plant", plant)

        def forward(self, x):
            x = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
            x2 = self.dark3(self.dark2(self.stem(x)))
            x1 = self.dark4(x2)
            x0 = self.dark5(x1)
            fpn0 = self.lateral0(x0)
            f0 = self.c3_p4(torch.cat([self.up(fpn0), x1], 1))
            fpn1 = self.reduce1(f0)
            p3 = self.c3_p3(torch.cat([self.up(fpn1), x2], 1))
            p4 = self.c3_n3(torch.cat([self.bu2(p3), fpn1], 1))
            p5 = self.c3_n4(torch.cat([self.bu1(p4), fpn0], 1))
            outs = []
            for k, feat in enumerate((p3, p4, p5)):
                feat = self.stems[k](feat)
                cls = self.cls_preds[k](self.cls_convs[k](feat))
                reg_feat = self.reg_convs[k](feat)
                reg, obj = self.reg_preds[k](reg_feat), self.obj_preds[k](reg_feat)
                if k == 2:
                    obj = obj + self.plant
                    cls = torch.cat([cls[:, :1] + self.plant, cls[:, 1:]], 1)
                else:
                    obj = obj - 30.0
                outs.append(torch.cat([reg, obj.sigmoid(), cls.sigmoid()], 1).flatten(2))   # (1, 85, h*w)
            return torch.cat(outs, 2).permute(0, 2, 1)                                      # (1, N, 85)

    torch.manual_seed(0)
    return Nano().eval()


def export_detector(path: Path) -> Path:
    import torch

    model = yolox_nano_shaped()
    x = torch.zeros(1, 3, YOLOX_INPUT, YOLOX_INPUT)
    with torch.no_grad():
        torch.onnx.export(model, x, str(path), input_names=["images"], output_names=["output"], opset_version=13,
                          dynamo=False)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m refpose.porting.bench.video", description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "wgnet"])
    p.add_argument("--frames", type=int, default=50)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads its OpenMP runtime (README, Speed)

    import refpose
    from refpose.pose.detector import PersonDetector
    from refpose.pose.video import run_video

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        clip = make_clip(d / "clip.mp4", args.frames)
        detector = PersonDetector(export_detector(d / "yolox_nano_shaped.onnx"))
        t = time.perf_counter()
        n = 0
        for f in range(10):
            n += len(detector(np.zeros((CLIP_SIZE[1], CLIP_SIZE[0], 3), np.uint8))[0])
        print(f"detector alone ({detector.runtime}): {10 / (time.perf_counter() - t):.1f} frames/s, "
              f"{n / 10:.0f} persons per frame")
        for name in args.configs:
            model = refpose.build(name, seed=0)
            run_video(clip, model, d / "warm", end=0.1, progress=False)          # compile the kernels first
            for det in (None, detector):
                t = time.perf_counter()
                s = run_video(clip, model, d / "out", detector=det, progress=False)
                dt = time.perf_counter() - t
                print(f"{name:6s} {'with' if det else 'no':>4s} detector: {s['frames']} frames of "
                      f"{CLIP_SIZE[0]}x{CLIP_SIZE[1]}, {s['persons']} poses, {dt:.1f} s, "
                      f"{s['frames'] / dt:.1f} frames/s")


if __name__ == "__main__":
    main()
