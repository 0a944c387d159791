"""MPII support: the keypoint conventions, the 16-joint configs at 256x256, and the flip
test following the model's dataset. Expected values are worked by hand in the comments."""
import dataclasses

import numpy as np
import pytest

from refpose import ConfigError, get_config
from refpose.keypoints import DATASETS, MPII
from refpose.pose.pipeline import predict_heatmaps
from refpose.weights import build


def test_mpii_joint_order_and_flip_pairs():
    # the benchmark's order: 0 r ankle ... 5 l ankle, 6 pelvis, 7 thorax, 8 upper neck, 9 head top,
    # 10 r wrist ... 15 l wrist
    assert MPII.num_joints == 16 and DATASETS["mpii"] is MPII
    assert MPII.names[0] == "right_ankle" and MPII.names[9] == "head_top" and MPII.names[15] == "left_wrist"
    for a, b in MPII.flip_pairs:                       # each pair is one joint on either side
        assert MPII.names[a].replace("right_", "") == MPII.names[b].replace("left_", "")
        assert MPII.names[a].startswith("right_") and MPII.names[b].startswith("left_")
    sided = {i for i, n in enumerate(MPII.names) if n.startswith(("left_", "right_"))}
    assert {i for p in MPII.flip_pairs for i in p} == sided == set(range(16)) - {6, 7, 8, 9}
    assert MPII.flip_index == (5, 4, 3, 2, 1, 0, 6, 7, 8, 9, 15, 14, 13, 12, 11, 10)
    assert all(0 <= a < 16 and 0 <= b < 16 for a, b in MPII.skeleton)
    with pytest.raises(ValueError, match="no OKS sigmas"):
        MPII.oks_sigmas


@pytest.mark.parametrize("name, win, glob", [("wgnet-mpii", True, True), ("wgnet-mpii-a", True, False),
                                             ("wgnet-mpii-b", False, True), ("wgnet-mpii-c", False, False)])
def test_mpii_configs(name, win, glob):
    cfg = get_config(name)
    coco = get_config(name.replace("-mpii", ""))
    assert cfg.input_size == (256, 256) and cfg.output_size() == (64, 64)
    assert cfg.num_keypoints == 16 and cfg.keypoints is MPII
    # same widths and depths as the COCO variant; windows and patches tile the square maps
    maps = {"s1": 64, "s2": 32, "s3": 16, "s4": 8, "d1": 16, "d2": 32, "d3": 64}
    for stage, side in maps.items():
        st, co = cfg.stages[stage], coco.stages[stage]
        assert (st.channels, st.depth, st.window_attn, st.global_attn) == \
            (co.channels, co.depth, co.window_attn, co.global_attn)
        assert cfg.map_size(stage) == (side, side)
        wh, ww = cfg.window_of(stage)
        assert side % wh == 0 and side % ww == 0
        assert wh % st.patch[0] == 0 and ww % st.patch[1] == 0


def test_mpii_head_has_16_outputs():
    model = build("wgnet-mpii")
    shapes = model.tensor_shapes_all()
    assert shapes["head.weight"][0] == 16 and shapes["head.bias"] == (16,)
    # wgnet has 5,719,154 parameters (DESIGN section 1); the head loses one 96-input channel
    # and its bias: 5,719,154 - 97 = 5,719,057
    assert model.num_params == 5_719_057


def test_keypoint_count_must_match_the_dataset():
    with pytest.raises(ConfigError, match="16 keypoints, but coco has 17"):
        dataclasses.replace(get_config("tiny"), num_keypoints=16)
    with pytest.raises(ConfigError, match="unknown dataset 'lsp'"):
        dataclasses.replace(get_config("tiny"), dataset="lsp")


def test_flip_test_uses_the_models_flip_pairs():
    cfg = dataclasses.replace(get_config("tiny"), name="tiny-mpii", num_keypoints=16, dataset="mpii")
    model = build(cfg, seed=3, dtype="float64")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, *cfg.input_size))
    plain = np.asarray(model(x))                               # (2, 16, 32, 24)
    mirrored = np.asarray(model(x[..., ::-1].copy()))
    # flip back by hand: joint k takes the mirrored map of its mirror joint (0<->5, 1<->4, 2<->3,
    # 10<->15, 11<->14, 12<->13), mirrored left-right and shifted one pixel to the right
    swap = [5, 4, 3, 2, 1, 0, 6, 7, 8, 9, 15, 14, 13, 12, 11, 10]
    back = mirrored[:, swap, :, ::-1]
    back = np.concatenate([back[..., :1], back[..., :-1]], axis=-1)
    expect = 0.5 * (plain + back)
    got = predict_heatmaps(model, x, flip=True)
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-12)    # float64, same ops: rounding only


def test_an_mpii_pose_is_drawn_with_the_mpii_skeleton():
    from refpose.pose.draw import draw_poses
    from refpose.keypoints import for_joints

    assert for_joints(16) is MPII and for_joints(17).name == "coco"
    with pytest.raises(ValueError, match="no keypoint conventions for 5 joints"):
        for_joints(5)
    # every joint far left except pelvis (6) and thorax (7), 100 px apart on a vertical line:
    # the pelvis-thorax link of MPII's skeleton must colour the pixels between them
    kpts = np.zeros((16, 3))
    kpts[:, :2] = (10, 10)
    kpts[:, 2] = 1.0
    kpts[6, :2], kpts[7, :2] = (100, 150), (100, 50)
    image = np.zeros((200, 200, 3), np.uint8)
    out = draw_poses(image, [{"keypoints": kpts, "bbox": [0, 0, 1, 1]}], boxes=False)
    assert out[100, 100].any()                     # on the link, halfway
    assert not out[100, 160].any()                 # away from every link


@pytest.mark.torch
def test_16_joint_model_matches_the_twin(single_threaded_blas):
    torch = pytest.importorskip("torch", reason="parity with the PyTorch twin needs torch")
    from refpose.porting.twin import WGNetTwin
    from refpose.weights import from_tensors, init_weights

    # the tiny config with MPII's head, at a square input whose maps its windows tile (32x32 ... 4x4)
    base = get_config("tiny")
    stages = {s.name: s for s in base.encoder + base.decoder}
    # stage: (window, patch) on its square map
    square = {"s1": ((8, 8), (4, 4)), "s2": ((8, 8), (4, 4)), "s3": ((4, 4), (2, 2)), "s4": ((4, 4), (4, 4)),
              "d1": ((4, 4), (2, 2)), "d2": ((8, 8), (4, 4)), "d3": ((8, 8), (4, 4))}

    def squared(names):
        return tuple(dataclasses.replace(stages[n], window=square[n][0], patch=square[n][1]) for n in names)

    enc, dec = squared(("s1", "s2", "s3", "s4")), squared(("d1", "d2", "d3"))
    cfg = dataclasses.replace(base, name="tiny-mpii", input_size=(128, 128), num_keypoints=16, dataset="mpii",
                              encoder=enc, decoder=dec)
    tensors = init_weights(cfg, seed=2)
    model = from_tensors(tensors, cfg, dtype="float64")
    twin = WGNetTwin(cfg).eval().double()
    twin.load_numpy(tensors)
    x = np.random.default_rng(1).standard_normal((2, 3, 128, 128))
    with torch.inference_mode():
        want = twin(torch.from_numpy(x)).numpy()
    got = np.asarray(model(x))
    assert got.shape == want.shape == (2, 16, 32, 32)
    # float64 through ~60 layers in two summation orders: ~1e-15 relative; 1e-9 as in test_parity
    assert np.abs(got - want).max() <= 1e-9 * np.abs(want).max()
