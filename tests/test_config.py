"""Configurations (refpose/config.py): the named tables of DESIGN section 1, validation when
a config is built (naming the stage at fault), and the dict/JSON round trip."""
import dataclasses
import json

import pytest

import refpose
from refpose import ConfigError, WGNetConfig, get_config

# DESIGN section 1, "Named configurations (input 256x192, output 17x64x48)", written out:
# stage: (map, C, blocks, window, patch, heads, window attention, global attention) of `wgnet`
DESIGN_TABLE = {
    "s1": ((64, 48), 96, 2, (16, 12), (4, 3), 3, True, True),
    "s2": ((32, 24), 160, 2, (8, 6), (4, 3), 5, True, True),
    "s3": ((16, 12), 192, 2, (8, 6), (4, 3), 6, True, True),
    "s4": ((8, 6), 256, 3, (8, 6), None, 8, True, False),    # window only: the window is the whole map
    "d1": ((16, 12), 192, 1, (8, 6), (4, 3), 6, True, True),
    "d2": ((32, 24), 160, 1, (8, 6), (4, 3), 5, True, True),
    "d3": ((64, 48), 96, 1, (16, 12), (4, 3), 3, True, True),
}
# paper Table 4 variants: which attentions each keeps
VARIANTS = {"wgnet": (True, True), "wgnet-a": (True, False), "wgnet-b": (False, True), "wgnet-c": (False, False)}


# --- the named configurations -------------------------------------------------------------------
@pytest.mark.parametrize("name", list(VARIANTS))
def test_named_config_is_the_design_table(name):
    cfg = get_config(name)
    keep_window, keep_global = VARIANTS[name]
    assert cfg.name == name
    assert cfg.input_size == (256, 192)
    assert cfg.output_size() == (64, 48)
    assert cfg.num_keypoints == 17
    assert cfg.stem == (16, 32)                         # DWSep(3->16), DWSep(16->32)
    assert cfg.stem_kernel == 5                         # DWSep(k=5, s=2)
    assert (cfg.ir_expand, cfg.ffn_expand, cfg.se_reduction, cfg.head_dim) == (6, 2, 4, 32)
    assert [s.name for s in cfg.encoder] == ["s1", "s2", "s3", "s4"]
    assert [s.name for s in cfg.decoder] == ["d1", "d2", "d3"]
    assert [s.stride for s in cfg.encoder] == [1, 2, 2, 2]    # IR(32->96, s1), then IR(s2) x3
    for stage, (hw, C, n, window, patch, heads, win, glob) in DESIGN_TABLE.items():
        st = cfg.stages[stage]
        assert cfg.map_size(stage) == hw, stage
        assert (st.channels, st.depth) == (C, n), stage
        assert st.window_attn == (win and keep_window), stage
        assert st.global_attn == (glob and keep_global), stage
        assert cfg.window_of(stage) == window, stage
        if st.global_attn:
            assert st.patch == patch, stage
        assert st.channels // cfg.head_dim == heads, stage


def test_tiny_is_small_and_valid():
    cfg = get_config("tiny")
    assert cfg.input_size == (128, 96)
    assert cfg.output_size() == (32, 24)
    assert cfg.total_stride() == 32
    assert cfg.window_of("s4") == (4, 3)                 # 8x6 clamped to the 4x3 map


def test_get_config_takes_a_name_an_object_or_a_dict():
    cfg = get_config("wgnet")
    assert get_config(cfg) is cfg
    assert get_config(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError):
        get_config(3)


def test_configs_are_frozen():
    cfg = get_config("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.encoder[0].channels = 8


# --- round trip --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(refpose.CONFIGS))
def test_dict_and_json_round_trip(name):
    cfg = get_config(name)
    assert WGNetConfig.from_dict(cfg.to_dict()) == cfg
    back = WGNetConfig.from_dict(json.loads(cfg.to_json()))      # tuples come back as lists
    assert back == cfg
    assert back.encoder[0].window == cfg.encoder[0].window and isinstance(back.encoder[0].window, tuple)
    assert back.map_size("s3") == cfg.map_size("s3")


def test_a_modified_config_round_trips_too():
    cfg = with_stage(get_config("tiny"), "s2", depth=3, window_attn=False)
    assert WGNetConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert WGNetConfig.from_dict(json.loads(cfg.to_json())) != get_config("tiny")


def test_malformed_dict_is_a_config_error():
    d = get_config("tiny").to_dict()
    del d["encoder"]
    with pytest.raises(ConfigError):
        WGNetConfig.from_dict(d)
    d = get_config("tiny").to_dict()
    d["encoder"][0]["colour"] = "blue"
    with pytest.raises(ConfigError):
        WGNetConfig.from_dict(d)


# --- invalid configs fail when built, naming the stage ------------------------------------------
def with_stage(cfg, name, **changes):
    """A copy of cfg with stage `name` changed: building it runs the validation."""
    def edit(stages):
        return tuple(dataclasses.replace(s, **changes) if s.name == name else s for s in stages)
    return dataclasses.replace(cfg, encoder=edit(cfg.encoder), decoder=edit(cfg.decoder))


@pytest.mark.parametrize("stage, changes, says", [
    ("s2", dict(window=(5, 6)), "window 5x6 does not divide the 32x24 map"),
    ("d3", dict(window=(16, 10)), "window 16x10 does not divide the 64x48 map"),
    ("s1", dict(window=(16, 0)), "window"),
    ("s1", dict(patch=(3, 3)), "patch 3x3 does not divide the 16x12 window"),
    ("d1", dict(patch=(4, 4)), "patch 4x4 does not divide the 8x6 window"),
    ("s4", dict(global_attn=True, patch=(3, 3)), "patch 3x3 does not divide the 8x6 window"),
    ("s3", dict(channels=200), "not divisible by the head size 32"),
    ("d2", dict(channels=144), "not divisible by the head size 32"),
    ("d2", dict(channels=150), "SE reduction"),
])
def test_invalid_stage_is_rejected_when_built(stage, changes, says):
    with pytest.raises(ConfigError) as e:
        with_stage(get_config("wgnet"), stage, **changes)
    msg = str(e.value)
    assert f"stage {stage}" in msg
    assert says in msg
    assert isinstance(e.value, ValueError)


def test_invalid_config_from_a_dict_is_rejected_too():
    d = get_config("wgnet").to_dict()
    d["decoder"][1]["window"] = [7, 6]                  # d2: 32x24 map
    with pytest.raises(ConfigError, match="stage d2"):
        get_config(d)


def test_attention_checks_skip_stages_without_attention():
    # wgnet-c has no attention: the window and head size do not matter there
    cfg = with_stage(get_config("wgnet-c"), "s2", window=(5, 5), channels=100)
    assert cfg.stages["s2"].channels == 100
    # a window-only stage does not need its patch to divide the window
    cfg = with_stage(get_config("wgnet-a"), "s2", patch=(3, 3))
    assert cfg.stages["s2"].patch == (3, 3)


@pytest.mark.parametrize("size", [(250, 192), (256, 190), (0, 192)])
def test_input_size_must_be_a_multiple_of_the_total_stride(size):
    with pytest.raises(ConfigError, match="multiple of 32"):
        dataclasses.replace(get_config("wgnet"), input_size=size)
    with pytest.raises(ConfigError, match="multiple of 32"):
        get_config("wgnet").check_input_size(size)


def test_input_size_whose_maps_the_windows_do_not_divide():
    # 288x192 is a multiple of 32, but s1's map 72x48 is not cut by 16x12 windows
    with pytest.raises(ConfigError, match="stage s1"):
        get_config("wgnet").check_input_size((288, 192))


def test_unknown_name():
    with pytest.raises(ConfigError) as e:
        get_config("wgnet-z")
    assert "'wgnet-z'" in str(e.value)
    for known in ("wgnet", "wgnet-a", "wgnet-b", "wgnet-c", "tiny"):
        assert known in str(e.value)


def test_unknown_stage_name_in_map_size():
    with pytest.raises(ConfigError, match="unknown stage"):
        get_config("wgnet").map_size("s5")
