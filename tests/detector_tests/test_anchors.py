"""Anchors, feature sizes, output flattening and box coding."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from effscale.detector.anchors import (
    Anchors,
    cached_anchors,
    feature_sizes,
    flatten_outputs,
    generate_anchors,
    num_anchors_total,
)
from effscale.detector.box_coding import MAX_LOG_RATIO, decode, encode
from effscale.detector.config import AnchorConfig, preset


def _effdet_anchors(anchor_config: AnchorConfig, size, min_level=3, max_level=7):
    pytest.importorskip("effdet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from effdet.anchors import Anchors as EffdetAnchors

    boxes = EffdetAnchors(
        min_level,
        max_level,
        anchor_config.num_scales,
        list(anchor_config.aspect_ratios),
        anchor_config.anchor_scale,
        tuple(size),
    ).boxes
    return boxes[:, [1, 0, 3, 2]]  # effdet is (y1, x1, y2, x2)


# ---------------------------------------------------------------------------- feature sizes


def test_feature_sizes_are_repeated_ceil_halvings():
    assert feature_sizes((512, 512), 3, 7) == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    # 544 = 17 * 32: 544/128 = 4.25 -> 5, 544/64 = 8.5 -> 9 (not 544 // 64).
    assert feature_sizes((544, 480), 3, 7) == [(68, 60), (34, 30), (17, 15), (9, 8), (5, 4)]
    assert feature_sizes((256, 192), 3, 7) == [(32, 24), (16, 12), (8, 6), (4, 3), (2, 2)]
    assert feature_sizes((96, 160), 5, 6) == [(3, 5), (2, 3)]
    for h, w in [(544, 480), (1280, 736), (32, 4096)]:
        for level, (fh, fw) in zip(range(3, 9), feature_sizes((h, w), 3, 8)):
            assert (fh, fw) == (math.ceil(h / 2**level), math.ceil(w / 2**level))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": (512,)}, "image_size"),
        ({"image_size": (512, 0)}, "image_size"),
        ({"image_size": (512.0, 512)}, "image_size"),
        ({"image_size": (512, 512), "min_level": 5, "max_level": 4}, "min_level"),
    ],
)
def test_feature_sizes_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        feature_sizes(**kwargs)


# ---------------------------------------------------------------------------- anchors


def test_anchor_count_for_d0():
    anchors = generate_anchors(AnchorConfig(), (512, 512))
    assert anchors.shape == (49104, 4)
    assert anchors.dtype == torch.float32
    assert (
        num_anchors_total(AnchorConfig(), (512, 512))
        == 49104
        == 9 * (64**2 + 32**2 + 16**2 + 8**2 + 4**2)
    )


def test_anchor_values_and_order_by_hand():
    cfg = AnchorConfig()
    anchors = generate_anchors(cfg, (512, 512))
    # Level 3 (stride 8), location (y=0, x=0), scale 0, ratio (1, 1): 32x32 centred at (4, 4).
    torch.testing.assert_close(anchors[0], torch.tensor([-12.0, -12.0, 20.0, 20.0]))
    # Ratio (1.4, 0.7): 44.8 wide, 22.4 high.
    torch.testing.assert_close(anchors[1], torch.tensor([4 - 22.4, 4 - 11.2, 4 + 22.4, 4 + 11.2]))
    # Scale 1 (2**(1/3)), ratio (1, 1): index 3.
    half = 16 * 2 ** (1 / 3)
    torch.testing.assert_close(anchors[3], torch.tensor([4 - half, 4 - half, 4 + half, 4 + half]))
    # Next location along x (x=1 -> centre x = 12), then the first anchor of row y=1.
    torch.testing.assert_close(anchors[9], torch.tensor([-4.0, -12.0, 28.0, 20.0]))
    torch.testing.assert_close(anchors[9 * 64], torch.tensor([-12.0, -4.0, 20.0, 28.0]))
    # First anchor of level 4 (stride 16, 64x64 centred at (8, 8)).
    torch.testing.assert_close(anchors[9 * 64 * 64], torch.tensor([-24.0, -24.0, 40.0, 40.0]))
    # Last anchor: level 7 (stride 128), location (3, 3), scale 2, ratio (0.7, 1.4).
    cx = 64 + 3 * 128
    half_w = 4 * 128 * 2 ** (2 / 3) * 0.7 / 2
    half_h = 4 * 128 * 2 ** (2 / 3) * 1.4 / 2
    torch.testing.assert_close(
        anchors[-1], torch.tensor([cx - half_w, cx - half_h, cx + half_w, cx + half_h])
    )


@pytest.mark.parametrize("size", [(512, 512), (640, 640), (256, 192), (544, 480), (96, 160)])
def test_anchors_match_effdet_exactly(size):
    cfg = AnchorConfig()
    ours = generate_anchors(cfg, size)
    theirs = _effdet_anchors(cfg, size)
    assert ours.shape == theirs.shape
    assert torch.equal(ours, theirs)


def test_non_default_anchor_config_matches_effdet():
    cfg = AnchorConfig(num_scales=2, aspect_ratios=((1.0, 1.0), (2.0, 0.5)), anchor_scale=3.0)
    ours = generate_anchors(cfg, (256, 384), 4, 6)
    assert ours.shape == (4 * (16 * 24 + 8 * 12 + 4 * 6), 4)
    assert torch.equal(ours, _effdet_anchors(cfg, (256, 384), 4, 6))


def test_non_square_anchor_count_and_stretched_stride():
    cfg = AnchorConfig()
    anchors = generate_anchors(cfg, (256, 192))
    assert anchors.shape == (9 * (32 * 24 + 16 * 12 + 8 * 6 + 4 * 3 + 2 * 2), 4) == (9216, 4)
    # Level 7 has 2 x 2 cells over 256 x 192 pixels: stride 128 in y, 96 in x (official).
    level7 = anchors[-4 * 9 :].reshape(2, 2, 9, 4)
    centres = (level7[..., :2] + level7[..., 2:]) / 2
    torch.testing.assert_close(centres[:, :, 0, 0], torch.tensor([[48.0, 144.0], [48.0, 144.0]]))
    torch.testing.assert_close(centres[:, :, 0, 1], torch.tensor([[64.0, 64.0], [192.0, 192.0]]))
    sides = level7[0, 0, 0, 2:] - level7[0, 0, 0, :2]
    torch.testing.assert_close(sides, torch.tensor([4 * 96.0, 4 * 128.0]))


def test_dtype_device_and_errors():
    anchors = generate_anchors(AnchorConfig(), (128, 128), device="cpu", dtype=torch.float64)
    assert anchors.dtype == torch.float64 and anchors.device.type == "cpu"
    with pytest.raises(ValueError, match="anchor_config"):
        generate_anchors({"num_scales": 3}, (128, 128))
    with pytest.raises(ValueError, match="dtype"):
        generate_anchors(AnchorConfig(), (128, 128), dtype=torch.int64)
    with pytest.raises(ValueError, match="image_size"):
        generate_anchors(AnchorConfig(), 128)


def test_cached_anchors_returns_same_tensor():
    cfg = AnchorConfig()
    a = cached_anchors(cfg, (256, 192))
    b = cached_anchors(AnchorConfig(), [256, 192], 3, 7, device=torch.device("cpu"))
    assert a is b
    assert torch.equal(a, generate_anchors(cfg, (256, 192)))
    assert cached_anchors(cfg, (256, 192), dtype=torch.float64) is not a


def test_anchors_module_buffer_is_not_persistent():
    config = preset("d0").replace(image_size=(256, 192))
    module = Anchors.from_config(config)
    assert module.num_anchors_per_location == 9
    assert module.feature_sizes == [(32, 24), (16, 12), (8, 6), (4, 3), (2, 2)]
    assert torch.equal(module(), generate_anchors(config.anchors, (256, 192)))
    assert module.state_dict() == {}
    assert module.to(torch.float64).boxes.dtype == torch.float64
    with pytest.raises(ValueError, match="config"):
        Anchors.from_config(config.anchors)


# ---------------------------------------------------------------------------- flatten_outputs


def test_flatten_outputs_matches_anchor_order():
    size, num_classes, num_anchors = (96, 64), 3, 9
    sizes = feature_sizes(size, 3, 7)
    anchors = generate_anchors(AnchorConfig(), size)
    # Encode, in each output channel, which (level, y, x, anchor, k) it belongs to.
    cls_levels, box_levels, expected = [], [], []
    for level, (h, w) in zip(range(3, 8), sizes):
        # float64 so that level * 1e6 + ... + k / 10 is exact enough.
        ys = torch.arange(h, dtype=torch.float64).view(1, 1, h, 1)
        xs = torch.arange(w, dtype=torch.float64).view(1, 1, 1, w)
        site = level * 1e6 + ys * 1e4 + xs * 1e2
        a = (
            torch.arange(num_anchors, dtype=torch.float64)
            .repeat_interleave(num_classes)
            .view(1, -1, 1, 1)
        )
        c = torch.arange(num_classes, dtype=torch.float64).repeat(num_anchors).view(1, -1, 1, 1)
        cls_levels.append((site + a + c / 10).expand(2, -1, h, w))
        ab = torch.arange(num_anchors, dtype=torch.float64).repeat_interleave(4).view(1, -1, 1, 1)
        kb = torch.arange(4, dtype=torch.float64).repeat(num_anchors).view(1, -1, 1, 1)
        box_levels.append((site + ab + kb / 10).expand(2, -1, h, w))
        grid = (
            torch.stack(
                torch.meshgrid(
                    torch.arange(h), torch.arange(w), torch.arange(num_anchors), indexing="ij"
                ),
                -1,
            )
            .reshape(-1, 3)
            .double()
        )
        expected.append(level * 1e6 + grid[:, 0] * 1e4 + grid[:, 1] * 1e2 + grid[:, 2])
    cls, box = flatten_outputs(cls_levels, box_levels, num_classes)
    expected = torch.cat(expected)
    n = anchors.shape[0]
    assert cls.shape == (2, n, num_classes) and box.shape == (2, n, 4)
    assert cls.dtype == box.dtype == torch.float64
    for b in range(2):
        for k in range(num_classes):
            torch.testing.assert_close(cls[b, :, k], expected + k / 10, rtol=0, atol=1e-6)
        for k in range(4):
            torch.testing.assert_close(box[b, :, k], expected + k / 10, rtol=0, atol=1e-6)


def test_flatten_outputs_errors():
    cls = [torch.zeros(2, 9 * 3, 4, 4)]
    with pytest.raises(ValueError, match=r"box_per_level\[0\]: expected shape \[2, 36, 4, 4\]"):
        flatten_outputs(cls, [torch.zeros(2, 36, 4, 5)], 3)
    with pytest.raises(ValueError, match=r"cls_per_level\[0\]"):
        flatten_outputs(cls, [torch.zeros(2, 36, 4, 4)], 4)
    with pytest.raises(ValueError, match="non-empty"):
        flatten_outputs([], [], 3)


# ---------------------------------------------------------------------------- box coding


def test_encode_decode_round_trip_and_known_values():
    anchors = generate_anchors(AnchorConfig(), (128, 96))
    torch.manual_seed(0)
    deltas = torch.randn(2, anchors.shape[0], 4) * 0.5
    boxes = decode(deltas, anchors)
    assert boxes.shape == deltas.shape
    torch.testing.assert_close(encode(boxes, anchors), deltas, rtol=1e-4, atol=1e-4)
    # A box twice the anchor's width, shifted by half an anchor height.
    anchor = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # w 20, h 40, centre (20, 40)
    box = torch.tensor([[0.0, 40.0, 40.0, 80.0]])  # w 40, h 40, centre (20, 60)
    torch.testing.assert_close(encode(box, anchor), torch.tensor([[0.5, 0.0, 0.0, math.log(2.0)]]))
    torch.testing.assert_close(decode(torch.tensor([[0.5, 0.0, 0.0, math.log(2.0)]]), anchor), box)


def test_box_coding_matches_effdet_coder():
    pytest.importorskip("effdet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from effdet.anchors import decode_box_outputs
        from effdet.object_detection import BoxList, FasterRcnnBoxCoder
    torch.manual_seed(1)
    anchors = generate_anchors(AnchorConfig(), (128, 128))
    centre = torch.rand(anchors.shape[0], 2) * 128
    size = torch.rand(anchors.shape[0], 2) * 100 + 2
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    theirs = FasterRcnnBoxCoder().encode(
        BoxList(boxes[:, [1, 0, 3, 2]]), BoxList(anchors[:, [1, 0, 3, 2]])
    )
    ours = encode(boxes, anchors)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        decode(ours, anchors),
        decode_box_outputs(ours, anchors[:, [1, 0, 3, 2]], output_xyxy=True),
        rtol=1e-5,
        atol=1e-4,
    )


def test_decode_clamps_size_and_upcasts():
    anchor = torch.tensor([0.0, 0.0, 16.0, 16.0])
    box = decode(torch.tensor([0.0, 0.0, 50.0, 50.0], dtype=torch.bfloat16), anchor)
    assert box.dtype == torch.float32
    assert torch.isfinite(box).all()
    torch.testing.assert_close(box[2] - box[0], torch.tensor(1000.0))
    assert MAX_LOG_RATIO == pytest.approx(math.log(62.5))
    # Degenerate boxes encode to finite deltas.
    assert torch.isfinite(encode(torch.tensor([5.0, 5.0, 5.0, 5.0]), anchor)).all()
    with pytest.raises(ValueError, match=r"deltas: expected shape \[\.\.\., 4\]"):
        decode(torch.zeros(3, 5), anchor)
    with pytest.raises(ValueError, match="boxes"):
        encode(torch.zeros(3, 4, dtype=torch.int64), anchor)
