"""Regenerate tiny_golden.npz: golden outputs of the tiny config from the PyTorch twin.

Run by hand (needs torch), from the repository root:

    python tests/golden/make_golden.py

The twin (refpose/twin.py, written independently from DESIGN.md) runs in float64 on the
weights `refpose.init_weights("tiny", WEIGHTS_SEED)` and a seeded input that is not
stored: the test regenerates it from INPUT_SEED. The file keeps a compact subset, so that
`tests/porting/test_parity.py` can check the NumPy model where torch is not installed:

- head_index, head_value: 1024 fixed random positions of the flattened output (N, 17, H/4, W/4);
- mean_<tap>, absmax_<tap>: per-channel means over (N, H, W) and max |value| of every tap;
- init_keys, init_sum, init_sumsq: checksums of a few initialiser tensors (and of all of
  them, key "*"), so that a change of the seeded initialiser is reported as such;
- input_sum, input_sumsq: the same for the seeded input (numpy's random stream);
- config (JSON), weights_seed, input_seed, batch, torch_version.
"""
from pathlib import Path

import numpy as np
import torch

import refpose
from refpose.porting.twin import WGNetTwin

CONFIG = "tiny"
WEIGHTS_SEED = 0
INPUT_SEED = 2024
BATCH = 2
NUM_POSITIONS = 1024
POSITION_SEED = 7
# one tensor of each kind the initialiser draws: conv (He), BN running var/mean, BN and LN
# scales, biases, a down-scaled residual projection; "*" is every tensor together
CHECKSUM_KEYS = ("stem.0.dw.conv.weight", "s1.ir.expand.bn.running_var", "s1.ir.expand.bn.running_mean",
                 "d2.skip.bn.weight", "s2.blocks.0.glob.norm.weight", "s2.blocks.0.glob.qkv.bias",
                 "s3.blocks.0.win.proj.weight", "head.weight", "*")
OUT = Path(__file__).with_name("tiny_golden.npz")


def checksum(tensors: dict, key: str) -> tuple[float, float]:
    """(sum, sum of squares) in float64; key "*" is all tensors in sorted key order."""
    keys = sorted(tensors) if key == "*" else [key]
    a = np.concatenate([tensors[k].astype(np.float64).ravel() for k in keys])
    return float(a.sum()), float((a * a).sum())


def main() -> None:
    cfg = refpose.get_config(CONFIG)
    tensors = refpose.init_weights(cfg, WEIGHTS_SEED)
    H, W = cfg.input_size
    x = np.random.default_rng(INPUT_SEED).standard_normal((BATCH, 3, H, W))   # float64

    twin = WGNetTwin(cfg).double().eval()
    twin.load_numpy(tensors)
    with torch.inference_mode():
        taps = {k: v.numpy() for k, v in twin.forward_taps(torch.from_numpy(x)).items()}

    head = taps["head"]                                                      # (N, 17, H/4, W/4)
    index = np.sort(np.random.default_rng(POSITION_SEED).choice(head.size, NUM_POSITIONS, replace=False))
    out = {
        "config": np.array(cfg.to_json()),
        "weights_seed": np.array(WEIGHTS_SEED), "input_seed": np.array(INPUT_SEED),
        "batch": np.array(BATCH), "torch_version": np.array(torch.__version__),
        "head_shape": np.array(head.shape), "head_index": index.astype(np.int32),
        "head_value": head.ravel()[index],
        "init_keys": np.array(CHECKSUM_KEYS),
        "init_sum": np.array([checksum(tensors, k)[0] for k in CHECKSUM_KEYS]),
        "init_sumsq": np.array([checksum(tensors, k)[1] for k in CHECKSUM_KEYS]),
        "input_sum": np.array(x.sum()), "input_sumsq": np.array((x * x).sum()),
        "taps": np.array(list(taps)),
    }
    for name, t in taps.items():
        out[f"mean_{name}"] = t.mean(axis=(0, 2, 3))                          # (C,)
        out[f"absmax_{name}"] = np.array(np.abs(t).max())
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT.name}: {OUT.stat().st_size:,} bytes, {len(taps)} taps, {NUM_POSITIONS} output positions")


if __name__ == "__main__":
    main()
