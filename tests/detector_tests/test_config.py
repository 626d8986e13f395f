import json

import pytest

from effscale.detector.config import (
    PRESET_NAMES,
    AnchorConfig,
    BackboneConfig,
    DetectorConfig,
    FpnConfig,
    HeadConfig,
    config_from_dict,
    from_scaling,
    load_config,
    preset,
)
from effscale.detector.scaling import PAPER_SPEC

OFFICIAL = {
    # backbone (w, d), R, W_bifpn, D_bifpn, D_head, fusion, anchor_scale
    "d0": ((1.0, 1.0), 512, 64, 3, 3, "fastattn", 4.0),
    "d1": ((1.0, 1.1), 640, 88, 4, 3, "fastattn", 4.0),
    "d2": ((1.1, 1.2), 768, 112, 5, 3, "fastattn", 4.0),
    "d3": ((1.2, 1.4), 896, 160, 6, 4, "fastattn", 4.0),
    "d4": ((1.4, 1.8), 1024, 224, 7, 4, "fastattn", 4.0),
    "d5": ((1.6, 2.2), 1280, 288, 7, 4, "fastattn", 4.0),
    "d6": ((1.8, 2.6), 1280, 384, 8, 5, "sum", 4.0),
    "d7": ((1.8, 2.6), 1536, 384, 8, 5, "sum", 5.0),
}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_equal_the_official_release(name):
    c = preset(name)
    (w, d), r, fw, fd, hd, fusion, anchor_scale = OFFICIAL[name]
    assert (c.backbone.width_multiplier, c.backbone.depth_multiplier) == (w, d)
    assert c.image_size == (r, r)
    assert (c.fpn.channels, c.fpn.repeats, c.fpn.fusion) == (fw, fd, fusion)
    assert c.head.repeats == hd
    assert c.anchors.anchor_scale == anchor_scale
    assert c.anchors.num_anchors == 9
    assert (c.min_level, c.max_level, c.num_classes) == (3, 7, 90)


@pytest.mark.parametrize("name", ["d0", "d7"])
def test_round_trip_toml_and_json(tmp_path, name):
    c = preset(name, num_classes=7).replace(image_size=(384, 640))
    for suffix in (".toml", ".json"):
        path = c.save(tmp_path / f"cfg{suffix}")
        assert load_config(path) == c
    assert config_from_dict(json.loads(c.to_json())) == c


def test_from_scaling_builds_the_spec_at_phi():
    c = from_scaling(PAPER_SPEC, 1, num_classes=3)
    assert c.image_size == (640, 640)
    assert c.fpn.channels == 88 and c.fpn.repeats == 4 and c.head.repeats == 3
    assert c.backbone.width_multiplier == 1.1 and c.backbone.depth_multiplier == 1.2
    small = from_scaling(PAPER_SPEC, -3, num_classes=3, image_size=(96, 128))
    assert small.image_size == (96, 128)


@pytest.mark.parametrize(
    "factory, field, allowed",
    [
        (
            lambda: BackboneConfig(width_multiplier=-1.0),
            "backbone.width_multiplier",
            r"\[0.05, 8\]",
        ),
        (lambda: FpnConfig(repeats=0), "fpn.repeats", r"\[1, 32\]"),
        (lambda: HeadConfig(repeats=0), "head.repeats", r"\[1, 16\]"),
        (lambda: FpnConfig(fusion="max"), "fpn.fusion", "fastattn, attn, sum"),
        (lambda: DetectorConfig(image_size=(500, 512)), "image_size", "multiple of 8"),
        (lambda: DetectorConfig(num_classes=0), "num_classes", r"\[1, 100000\]"),
        (lambda: AnchorConfig(anchor_scale=0), "anchors.anchor_scale", r"\(0, 64\]"),
        (lambda: preset("d9"), "preset", "d0, d1"),
        (lambda: config_from_dict({"fpn": {"width": 3}}), "fpn.width", "unknown key"),
    ],
)
def test_bad_input_names_field_and_range(factory, field, allowed):
    with pytest.raises(ValueError) as info:
        factory()
    message = str(info.value)
    assert message.startswith(f"{field}: ")
    assert "\n" not in message
    import re

    assert re.search(allowed, message), message


def test_load_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = ")
    with pytest.raises(ValueError, match="not valid toml"):
        load_config(bad)
