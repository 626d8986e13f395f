"""``padding``: TF "same" as timm/effdet pad it, symmetric as before, the same sizes and costs
either way, and configs that record it (files without it load as they were built)."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from timm.layers import create_pool2d

from effscale.detector.backbone import EfficientNetBackbone
from effscale.detector.complexity import count_complexity, trace_complexity
from effscale.detector.config import (
    PRESET_NAMES,
    BackboneConfig,
    DetectorConfig,
    config_from_dict,
    from_scaling,
    load_config,
    preset,
)
from effscale.detector.layers import max_pool_down
from effscale.detector.model import build_model
from effscale.detector.scaling import PAPER_SPEC


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (5, 4), (3, 2), (2, 3), (1, 1)])
def test_same_max_pool_is_timms_tf_same_pool(size):
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    tf_same = create_pool2d("max", kernel_size=3, stride=2, padding="same")  # effdet's pool
    assert torch.equal(max_pool_down(x, "same"), tf_same(x))
    symmetric = torch.nn.functional.max_pool2d(x, 3, 2, padding=1)
    assert torch.equal(max_pool_down(x, "symmetric"), symmetric)
    assert max_pool_down(x, "same").shape == symmetric.shape  # ceil halving both ways


def test_even_sides_pool_other_windows_with_same_padding():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # same pads only after an even side: windows start at 0 and 2, so the first is x[:3, :3]
    assert max_pool_down(x, "same").flatten().tolist() == [10.0, 11.0, 14.0, 15.0]
    assert max_pool_down(x, "symmetric").flatten().tolist() == [5.0, 7.0, 13.0, 15.0]


def test_same_backbone_is_timms_tf_efficientnet_b0():
    torch.manual_seed(0)
    theirs = timm.create_model("tf_efficientnet_b0", features_only=True, out_indices=(2, 3, 4))
    ours = EfficientNetBackbone(BackboneConfig(), padding="same")
    ours.body.load_state_dict(theirs.state_dict())
    ours.eval(), theirs.eval()
    images = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for a, b in zip(ours(images), theirs(images)):
            assert torch.allclose(a, b, rtol=0, atol=1e-5)
        symmetric = EfficientNetBackbone(BackboneConfig(), padding="symmetric").eval()
        symmetric.body.load_state_dict(theirs.state_dict())
        assert not torch.allclose(symmetric(images)[0], theirs(images)[0], atol=1e-3)


@pytest.mark.parametrize("name", ["d0", "d3"])
def test_padding_changes_neither_params_nor_macs(name):
    same = preset(name).replace(image_size=(256, 192))
    symmetric = same.replace(padding="symmetric")
    assert count_complexity(same) == count_complexity(symmetric)
    with torch.device("meta"):
        counts = [sum(p.numel() for p in build_model(c).parameters()) for c in (same, symmetric)]
    assert counts[0] == counts[1] == count_complexity(same).params


def test_traced_macs_of_a_same_model_equal_the_counted():
    config = from_scaling(PAPER_SPEC, -3, num_classes=4, image_size=(96, 128))
    assert config.padding == "same"
    assert trace_complexity(config) == count_complexity(config)


def test_presets_and_scaled_configs_use_same_padding():
    assert {preset(name).padding for name in PRESET_NAMES} == {"same"}
    assert from_scaling(PAPER_SPEC, 0, name="d0") == preset("d0")
    assert from_scaling(PAPER_SPEC, 2, padding="symmetric").padding == "symmetric"


def test_padding_round_trips_and_files_without_it_load_symmetric(tmp_path):
    for config in (preset("d1"), preset("d1").replace(padding="symmetric")):
        for suffix in (".toml", ".json"):
            assert load_config(config.save(tmp_path / f"c{suffix}")) == config
    old = preset("d0").to_dict()
    del old["padding"]  # a file written before the key existed, when every model was symmetric
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert load_config(tmp_path / "old.json") == preset("d0").replace(padding="symmetric")
    assert DetectorConfig().padding == config_from_dict({}).padding == "symmetric"


def test_unknown_padding_is_one_line():
    with pytest.raises(ValueError, match=r"^padding: must be one of same, symmetric, got 'valid'$"):
        preset("d0").replace(padding="valid")
