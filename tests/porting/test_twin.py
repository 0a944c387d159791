"""Tests of the PyTorch twin (refpose/twin.py) against DESIGN.md sections 1 and 3.

Expected values here come from DESIGN.md (key names, parameter counts) or are written out by
hand from the grouping definition of paper section 3.2 — never from the code under test.
"""
import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the twin is an optional extra that needs torch")

from refpose.config import CONFIGS, get_config  # noqa: E402
from refpose.errors import WeightsError  # noqa: E402
from refpose.porting.twin import Attention, WGNetTwin, WNet, clamp_window, export_checkpoint, global_partition, global_reverse, read_checkpoint, window_partition, window_reverse

# float64 results of the same arithmetic in a different order agree to ~1e-15 relative;
# 1e-10 leaves room for accumulation over a few hundred terms.
TOL64 = 1e-10


def keys_of(model):
    return {k for k in model.state_dict() if not k.endswith(".num_batches_tracked")}


def conv_bn(unit):
    """The five keys of a conv+BN unit, DESIGN section 3."""
    return {f"{unit}.conv.weight", f"{unit}.bn.weight", f"{unit}.bn.bias",
            f"{unit}.bn.running_mean", f"{unit}.bn.running_var"}


def attn(prefix):
    return {f"{prefix}.{p}.{w}" for p in ("norm", "qkv", "proj") for w in ("weight", "bias")}


# --- weight names (DESIGN section 3) -----------------------------------------------------------
@pytest.fixture(scope="module")
def wgnet():
    return WGNetTwin("wgnet")


def test_representative_keys_are_the_design_names(wgnet):
    keys = keys_of(wgnet)
    expected = (
        conv_bn("stem.0.dw") | conv_bn("stem.0.pw") | conv_bn("stem.1.dw") | conv_bn("stem.1.pw")
        | conv_bn("s1.ir.expand") | conv_bn("s1.ir.dw") | conv_bn("s1.ir.project")
        | attn("s1.blocks.0.win") | attn("s1.blocks.0.glob")
        | conv_bn("s1.blocks.0.ffn.expand") | conv_bn("s1.blocks.0.ffn.dw") | conv_bn("s1.blocks.0.ffn.project")
        | attn("s4.blocks.2.win") | conv_bn("s4.blocks.2.ffn.project")
        | conv_bn("d2.up") | attn("d2.blocks.0.win") | attn("d2.blocks.0.glob")
        | {"d1.se.fc1.weight", "d1.se.fc1.bias", "d1.se.fc2.weight", "d1.se.fc2.bias"}
        | {"head.weight", "head.bias"}
    )
    assert expected <= keys, sorted(expected - keys)
    # s4 has window attention only; named configs need no skip projection (s_i and d_j match);
    # no relative position bias; depths are 2, 2, 2, 3 and 1, 1, 1
    absent = {"s4.blocks.0.glob.qkv.weight", "d1.skip.conv.weight", "d2.skip.conv.weight",
              "d3.skip.conv.weight", "s1.blocks.0.win.rpb", "s1.blocks.2.win.qkv.weight",
              "s4.blocks.3.win.qkv.weight", "d1.blocks.1.win.qkv.weight"}
    assert not absent & keys


def test_every_key_follows_a_design_pattern(wgnet):
    cbn = r"\.(conv\.weight|bn\.(weight|bias|running_mean|running_var))"
    patterns = [
        rf"stem\.[01]\.(dw|pw){cbn}",
        rf"s[1-4]\.ir\.(expand|dw|project){cbn}",
        r"(s[1-4]|d[1-3])\.blocks\.\d+\.(win|glob)\.(norm|qkv|proj)\.(weight|bias)",
        rf"(s[1-4]|d[1-3])\.blocks\.\d+\.ffn\.(expand|dw|project){cbn}",
        rf"d[1-3]\.(up|skip){cbn}",
        r"d[1-3]\.se\.fc[12]\.(weight|bias)",
        r"head\.(weight|bias)",
    ]
    stray = [k for k in keys_of(wgnet) if not any(re.fullmatch(p, k) for p in patterns)]
    assert stray == []


def test_layouts_are_pytorch_layouts(wgnet):
    sd = wgnet.state_dict()
    # DESIGN table: s1 C=96, s4 C=256, d1 C=192, d3 C=96, stem 16 -> 32, ffn e=2, IR e=6
    assert tuple(sd["stem.0.dw.conv.weight"].shape) == (3, 1, 5, 5)
    assert tuple(sd["stem.1.pw.conv.weight"].shape) == (32, 16, 1, 1)
    assert tuple(sd["s1.ir.expand.conv.weight"].shape) == (192, 32, 1, 1)
    assert tuple(sd["s1.ir.dw.conv.weight"].shape) == (192, 1, 3, 3)
    assert tuple(sd["s1.blocks.0.win.qkv.weight"].shape) == (288, 96)
    assert tuple(sd["s1.blocks.0.glob.proj.weight"].shape) == (96, 96)
    assert tuple(sd["s1.blocks.1.ffn.expand.conv.weight"].shape) == (192, 96, 1, 1)
    assert tuple(sd["d1.up.conv.weight"].shape) == (256, 192, 2, 2)     # (Cin, Cout, kh, kw)
    assert tuple(sd["d1.se.fc1.weight"].shape) == (48, 192, 1, 1)
    assert tuple(sd["d1.se.fc2.weight"].shape) == (192, 48, 1, 1)
    assert tuple(sd["head.weight"].shape) == (17, 96, 1, 1)


def test_tiny_has_a_skip_projection_and_the_right_output_shape():
    model = WGNetTwin("tiny").eval()
    assert tuple(model.state_dict()["d2.skip.conv.weight"].shape) == (32, 64, 1, 1)   # s2 64 -> d2 32
    assert "d1.skip.conv.weight" not in model.state_dict()
    with torch.no_grad():
        taps = model.forward_taps(torch.randn(2, 3, 128, 96))
    assert list(taps) == ["stem", "s1", "s2", "s3", "s4", "d1", "d2", "d3", "head"]
    shapes = {k: tuple(v.shape) for k, v in taps.items()}
    assert shapes == {"stem": (2, 16, 32, 24), "s1": (2, 32, 32, 24), "s2": (2, 64, 16, 12),
                      "s3": (2, 64, 8, 6), "s4": (2, 96, 4, 3), "d1": (2, 64, 8, 6),
                      "d2": (2, 32, 16, 12), "d3": (2, 32, 32, 24), "head": (2, 17, 32, 24)}
    assert torch.isfinite(taps["head"]).all()


# --- parameter counts (DESIGN section 1, "Reference sizes") ------------------------------------
@pytest.mark.parametrize("name, params", [
    ("wgnet", 5_719_154), ("wgnet-a", 4_850_930), ("wgnet-b", 4_059_890), ("wgnet-c", 3_191_666)])
def test_parameter_count_matches_design(name, params):
    model = WGNetTwin(name)
    assert sum(p.numel() for p in model.parameters()) == params


# --- grouping (paper section 3.2, Fig. 2) -------------------------------------------------------
def coordinate_map(N, H, W):
    """(N, H, W, 1) float64 map whose value at (n, h, w) is n·10000 + h·100 + w."""
    n, h, w = np.meshgrid(np.arange(N), np.arange(H), np.arange(W), indexing="ij")
    return torch.from_numpy((n * 10000 + h * 100 + w)[..., None].astype(np.float64))


def members(groups):
    """The sorted set of coordinate codes in each group."""
    return [sorted(int(v) for v in g[:, 0]) for g in groups]


def test_window_partition_by_hand():
    # 4x6 map, 2x3 windows: four windows, row-major
    groups = window_partition(coordinate_map(1, 4, 6), 2, 3)
    assert members(groups) == [[0, 1, 2, 100, 101, 102], [3, 4, 5, 103, 104, 105],
                               [200, 201, 202, 300, 301, 302], [203, 204, 205, 303, 304, 305]]


def test_global_partition_by_hand():
    # 8x8 map, 4x4 windows (2x2 of them), 2x2 patches: four groups, group (a, b) holds
    # patch (a, b) of each of the four windows, 16 tokens
    groups = global_partition(coordinate_map(1, 8, 8), 4, 4, 2, 2)
    assert groups.shape == (4, 16, 1)
    assert members(groups) == [
        [0, 1, 4, 5, 100, 101, 104, 105, 400, 401, 404, 405, 500, 501, 504, 505],          # patch (0, 0)
        [2, 3, 6, 7, 102, 103, 106, 107, 402, 403, 406, 407, 502, 503, 506, 507],          # patch (0, 1)
        [200, 201, 204, 205, 300, 301, 304, 305, 600, 601, 604, 605, 700, 701, 704, 705],  # patch (1, 0)
        [202, 203, 206, 207, 302, 303, 306, 307, 602, 603, 606, 607, 702, 703, 706, 707],  # patch (1, 1)
    ]


def test_global_partition_follows_the_definition_at_paper_sizes():
    # 16x12 map, 8x6 windows, 4x3 patches (the d1 geometry), batch 2: (8/4)(6/3) = 4 groups per
    # image of (16/8)(12/6)·12 = 48 tokens; membership written from the definition
    N, H, W, wh, ww, ph, pw = 2, 16, 12, 8, 6, 4, 3
    groups = global_partition(coordinate_map(N, H, W), wh, ww, ph, pw)
    assert groups.shape == (N * 4, 48, 1)
    want = []
    for n in range(N):
        for a in range(wh // ph):
            for b in range(ww // pw):
                want.append(sorted(n * 10000 + (i * wh + a * ph + r) * 100 + (j * ww + b * pw + s)
                                   for i in range(H // wh) for j in range(W // ww)
                                   for r in range(ph) for s in range(pw)))
    assert members(groups) == want


@pytest.mark.parametrize("N, H, W, wh, ww, ph, pw", [
    (1, 8, 6, 8, 6, 4, 3), (2, 16, 12, 8, 6, 4, 3), (3, 12, 10, 6, 5, 3, 1), (1, 4, 3, 4, 3, 1, 1)])
def test_partition_then_reverse_is_identity(N, H, W, wh, ww, ph, pw):
    x = torch.randn(N, H, W, 5, dtype=torch.float64)
    assert torch.equal(window_reverse(window_partition(x, wh, ww), N, H, W, wh, ww), x)
    assert torch.equal(global_reverse(global_partition(x, wh, ww, ph, pw), N, H, W, wh, ww, ph, pw), x)


def test_window_is_clamped_like_the_config():
    for name in CONFIGS:
        cfg = get_config(name)
        for stage in cfg.encoder + cfg.decoder:
            H, W = cfg.map_size(stage.name)
            assert clamp_window(stage.window, H, W) == cfg.window_of(stage.name)


def naive_attention_branch(module, x):
    """Proj(MHSA(Group(LN(x)))) written from the definition, one group at a time, with group
    membership from pixel coordinates. x: (N, C, H, W) float64."""
    N, C, H, W = x.shape
    wh, ww = min(module.window[0], H), min(module.window[1], W)
    ph, pw = module.patch if module.kind == "global" else (wh, ww)   # a window is its one "patch"
    mu = x.mean(dim=1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=1, keepdim=True)
    g, b = module.norm.weight.view(1, C, 1, 1), module.norm.bias.view(1, C, 1, 1)
    t = (x - mu) / torch.sqrt(var + 1e-5) * g + b
    Wqkv, bqkv = module.qkv.weight, module.qkv.bias
    out = torch.zeros_like(x)
    for n in range(N):
        if module.kind == "window":
            coord_groups = [[(i * wh + r, j * ww + s) for r in range(wh) for s in range(ww)]
                            for i in range(H // wh) for j in range(W // ww)]
        else:
            coord_groups = [[(i * wh + a * ph + r, j * ww + bb * pw + s)
                             for i in range(H // wh) for j in range(W // ww)
                             for r in range(ph) for s in range(pw)]
                            for a in range(wh // ph) for bb in range(ww // pw)]
        for coords in coord_groups:
            tok = torch.stack([t[n, :, h, w] for h, w in coords])          # (T, C)
            heads = []
            for h in range(C // 32):
                rows = slice(h * 32, (h + 1) * 32)
                q = tok @ Wqkv[:C][rows].T + bqkv[:C][rows]
                k = tok @ Wqkv[C:2 * C][rows].T + bqkv[C:2 * C][rows]
                v = tok @ Wqkv[2 * C:][rows].T + bqkv[2 * C:][rows]
                heads.append(torch.softmax(q @ k.T / 32 ** 0.5, dim=-1) @ v)
            y = torch.cat(heads, dim=1) @ module.proj.weight.T + module.proj.bias
            for (h, w), row in zip(coords, y):
                out[n, :, h, w] = row
    return out


@pytest.mark.parametrize("kind", ["window", "global"])
def test_attention_branch_matches_the_definition(kind):
    torch.manual_seed(0)
    module = Attention(64, 32, kind, window=(8, 6), patch=(4, 3)).double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        x = torch.randn(2, 64, 16, 12, dtype=torch.float64)
        got, want = module(x), naive_attention_branch(module, x)
    assert torch.allclose(got, want, rtol=TOL64, atol=TOL64)


def test_wnet_is_identity_when_its_branches_are_zero():
    # every sub-block is x + f(x): zero output projections and a zero-scaled FFN project BN
    # leave x unchanged
    cfg = get_config("tiny")
    block = WNet(32, cfg, (8, 6), (4, 3), True, True).eval()
    with torch.no_grad():
        for att in (block.win, block.glob):
            att.proj.weight.zero_()
            att.proj.bias.zero_()
        block.ffn.project.bn.weight.zero_()
        block.ffn.project.bn.bias.zero_()
        x = torch.randn(2, 32, 16, 12)
        assert torch.equal(block(x), x)


# --- strict loading (DESIGN section 3) ----------------------------------------------------------
def random_numpy_weights(name, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in WGNetTwin(name).state_dict().items():
        if k.endswith(".num_batches_tracked"):
            continue
        a = rng.standard_normal(tuple(v.shape)) * 0.1
        if k.endswith("running_var"):
            a = np.abs(a) + 0.5
        out[k] = a.astype(np.float32)
    return out


def test_load_numpy_loads_every_value_and_keeps_the_dtype():
    weights = random_numpy_weights("tiny")
    model = WGNetTwin("tiny").double()
    model.load_numpy(weights)
    sd = model.state_dict()
    for k, a in weights.items():
        assert sd[k].dtype == torch.float64
        assert np.array_equal(sd[k].numpy(), a.astype(np.float64)), k
    with_counter = dict(weights, **{"s1.ir.dw.bn.num_batches_tracked": np.array(7)})
    model.load_numpy(with_counter)          # accepted and ignored


def test_load_numpy_is_strict():
    weights = random_numpy_weights("tiny")
    model = WGNetTwin("tiny")
    missing = {k: v for k, v in weights.items() if k != "d2.skip.bn.running_var"}
    with pytest.raises(ValueError, match=r"d2\.skip\.bn\.running_var"):
        model.load_numpy(missing)
    with pytest.raises(ValueError, match=r"s1\.blocks\.0\.win\.rpb"):
        model.load_numpy(dict(weights, **{"s1.blocks.0.win.rpb": np.zeros((3, 15, 11), np.float32)}))
    wrong = dict(weights, **{"head.weight": np.zeros((17, 33, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"head\.weight.*\(17, 33, 1, 1\).*\(17, 32, 1, 1\)"):
        model.load_numpy(wrong)
    with pytest.raises(ValueError, match=r"head\.bias"):
        model.load_numpy(dict(weights, **{"head.bias": np.zeros(17, np.int64)}))
    with pytest.raises(ValueError, match=r"head\.bias"):
        model.load_numpy(dict(weights, **{"head.bias": np.full(17, np.nan, np.float32)}))


def test_load_numpy_fails_as_the_weights_loader_does():
    # one strict check: the same exception type and message from the twin and from refpose.weights
    from refpose.weights import from_tensors
    weights = random_numpy_weights("tiny")
    model = WGNetTwin("tiny")
    bad = [{k: v for k, v in weights.items() if k != "d2.skip.bn.running_var"},
           dict(weights, **{"s1.blocks.0.win.rpb": np.zeros((3, 15, 11), np.float32)}),
           dict(weights, **{"head.weight": np.zeros((17, 33, 1, 1), np.float32)}),
           dict(weights, **{"head.bias": np.zeros(17, np.int64)}),
           dict(weights, **{"head.bias": np.full(17, np.nan, np.float32)})]
    for tensors in bad:
        with pytest.raises(WeightsError) as twin_error:
            model.load_numpy(tensors)
        with pytest.raises(WeightsError) as numpy_error:
            from_tensors(tensors, "tiny", impl="reference", source="weights")
        assert str(twin_error.value) == str(numpy_error.value)


# --- export (DESIGN sections 3 and 5) ----------------------------------------------------------
def trained_tiny_state_dict():
    torch.manual_seed(1)
    model = WGNetTwin("tiny")
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.1)
    return model.state_dict()


@pytest.mark.parametrize("wrapped, config", [(False, None), (True, None), (False, "tiny")])
def test_export_writes_every_tensor(tmp_path, wrapped, config):
    pytest.importorskip("refpose.weights", reason="refpose.weights (save_weights) not written yet")
    from safetensors import safe_open
    from safetensors.numpy import load_file

    sd = trained_tiny_state_dict()
    ckpt, out = tmp_path / "model.pth", tmp_path / "tiny.safetensors"
    torch.save({"state_dict": sd, "epoch": 3} if wrapped else sd, ckpt)
    export_checkpoint(ckpt, out, config=config)

    back = load_file(str(out))
    want = {k: v for k, v in sd.items() if not k.endswith(".num_batches_tracked")}
    assert set(back) == set(want)
    for k, v in want.items():
        assert back[k].dtype == np.float32
        assert np.array_equal(back[k], v.numpy()), k
    with safe_open(str(out), framework="numpy") as f:
        meta = f.metadata()
    assert json.loads(meta["config"])["name"] == "tiny"
    assert json.loads(meta["trained"]) is True


@pytest.mark.parametrize("name", ["wgnet", "wgnet-a", "wgnet-b", "wgnet-c", "tiny"])
def test_checkpoint_config_is_detected(tmp_path, name):
    # wgnet-b and wgnet-c differ only in the global-attention keys
    ckpt = tmp_path / "model.pt"
    torch.save(WGNetTwin(name).state_dict(), ckpt)
    tensors, cfg = read_checkpoint(ckpt)
    assert cfg.name == name
    assert not any(k.endswith(".num_batches_tracked") for k in tensors)
    assert all(v.dtype == np.float32 for v in tensors.values())


def test_export_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="nope.pth"):
        export_checkpoint(missing, tmp_path / "out.safetensors")

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(WeightsError, match="garbage.pt"):
        export_checkpoint(garbage, tmp_path / "out.safetensors")

    sd = trained_tiny_state_dict()
    del sd["head.bias"]
    odd = tmp_path / "odd.pth"
    torch.save(sd, odd)
    with pytest.raises(WeightsError, match=r"odd\.pth.*head\.bias"):
        export_checkpoint(odd, tmp_path / "out.safetensors")
    with pytest.raises(WeightsError, match=r"odd\.pth.*'wgnet'"):
        export_checkpoint(odd, tmp_path / "out.safetensors", config="wgnet")
    assert not (tmp_path / "out.safetensors").exists()
