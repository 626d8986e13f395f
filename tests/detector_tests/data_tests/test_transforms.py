"""ResizePad, TrainTransform and normalize: exact box arithmetic, flips, crops, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from effscale.detector.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CocoDetection,
    DataError,
    ResizePad,
    TrainTransform,
    normalize,
)


def _target(boxes, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.arange(len(boxes), dtype=torch.int64) if labels is None else torch.tensor(labels)
    return {"boxes": boxes, "labels": labels, "image_id": 1, "scale": 1.0, "orig_size": (0, 0)}


def _marked_image(width, height, box):
    """Black image with a white rectangle covering pixel box ``(x1, y1, x2, y2)`` (x2/y2 exclusive)."""
    image = Image.new("RGB", (width, height))
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 255, 255))
    return image


def test_flip_moves_boxes_and_pixels_consistently():
    image = _marked_image(40, 20, (4, 2, 14, 8))
    flip = TrainTransform((32, 64), scale_range=(1.0, 1.0), hflip_prob=1.0)
    canvas, target = flip(image, _target([[4, 2, 14, 8]]))
    # ratio min(32/20, 64/40) = 1.6 -> 64 x 32, no crop; x -> 64 - x
    assert tuple(canvas.shape) == (3, 32, 64)
    torch.testing.assert_close(target["boxes"], torch.tensor([[64 - 22.4, 3.2, 64 - 6.4, 12.8]]))
    assert target["scale"] == pytest.approx(0.625)
    assert bool((canvas[:, 5:11, 44:55] > 200).all())  # the white patch moved to the right side
    assert bool((canvas[:, 5:11, 9:20] < 30).all())

    plain_canvas, plain_target = ResizePad((32, 64))(image, _target([[4, 2, 14, 8]]))
    assert torch.equal(canvas, plain_canvas.flip(-1))
    noflip_canvas, noflip_target = TrainTransform((32, 64), scale_range=(1.0, 1.0), hflip_prob=0.0)(
        image, _target([[4, 2, 14, 8]])
    )
    assert torch.equal(noflip_canvas, plain_canvas)
    torch.testing.assert_close(noflip_target["boxes"], plain_target["boxes"])


def test_crop_clips_and_drops_boxes_with_exact_numbers():
    # seed 2 draws: scale 2.0 (fixed), no flip, crop offset x0=3, y0=5 into the 64 x 64 resized image
    image = _marked_image(32, 32, (10, 10, 14, 12))
    boxes = [
        [0, 0, 32, 32],  # -> [-3, -5, 61, 59] clipped to [0, 0, 32, 32]: keeps exactly 25% -> kept
        [1, 1, 3, 3],  # -> [-1, -3, 3, 1] clipped to [0, 0, 3, 1]: 1 px tall -> dropped
        [10, 10, 14, 12],  # -> [17, 15, 25, 19] inside -> kept (the white patch)
        [15, 0, 20, 3],  # -> [27, -5, 37, 1] clipped to [27, 0, 32, 1] -> dropped
        [12, 14, 20, 18],  # -> [21, 23, 37, 31] clipped to [21, 23, 32, 31]: 69% kept -> kept
        [
            14,
            15,
            16.5,
            30,
        ],  # -> [25, 25, 30, 55] clipped to [25, 25, 30, 32]: 35/150 = 23% -> dropped
        [14, 15, 16.5, 27],  # -> [25, 25, 30, 49] clipped to [25, 25, 30, 32]: 35/120 = 29% -> kept
    ]
    crop = TrainTransform((32, 32), scale_range=(2.0, 2.0), hflip_prob=0.0, seed=2)
    canvas, target = crop(image, _target(boxes))
    assert tuple(canvas.shape) == (3, 32, 32)
    assert target["boxes"].tolist() == [
        [0, 0, 32, 32],
        [17, 15, 25, 19],
        [21, 23, 32, 31],
        [25, 25, 30, 32],
    ]
    assert target["labels"].tolist() == [0, 2, 4, 6]
    assert bool((canvas[:, 16:18, 18:24] > 200).all())
    assert bool((canvas[:, 0:12, 0:12] < 30).all())


def test_downscale_pads_bottom_right():
    image = _marked_image(64, 64, (0, 0, 64, 64))
    small = TrainTransform((64, 64), scale_range=(0.5, 0.5), hflip_prob=0.0)
    canvas, target = small(image, _target([[8, 8, 40, 24]]))
    assert bool((canvas[:, :32, :32] == 255).all()) and int(canvas[:, 32:, :].sum()) == 0
    assert int(canvas[:, :, 32:].sum()) == 0
    assert target["boxes"].tolist() == [[4, 4, 20, 12]]
    assert target["scale"] == pytest.approx(2.0)


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (32, 128)])
def test_non_square_sizes(size, quirky):
    ds = CocoDetection(*quirky, transform=TrainTransform(size, seed=3))
    for index in range(len(ds)):
        for _ in range(3):
            image, target = ds[index]
            assert tuple(image.shape) == (3, *size) and image.dtype == torch.uint8
            boxes = target["boxes"]
            assert boxes.dtype == torch.float32 and target["labels"].dtype == torch.int64
            assert len(boxes) == len(target["labels"])
            if len(boxes):
                assert float(boxes[:, 0::2].min()) >= 0 and float(boxes[:, 0::2].max()) <= size[1]
                assert float(boxes[:, 1::2].min()) >= 0 and float(boxes[:, 1::2].max()) <= size[0]
                assert bool(((boxes[:, 2:] - boxes[:, :2]) >= 2).all())
    image, _ = CocoDetection(*quirky, transform=ResizePad(size))[1]
    assert tuple(image.shape) == (3, *size)


def _run(transform, image, n=6):
    return [transform(image, _target([[4, 2, 30, 18], [20, 5, 38, 19]])) for _ in range(n)]


def test_train_transform_is_deterministic_per_seed():
    image = _marked_image(40, 20, (4, 2, 30, 18))
    first = _run(TrainTransform((64, 64), seed=7), image)
    second = _run(TrainTransform((64, 64), seed=7), image)
    for (img_a, tgt_a), (img_b, tgt_b) in zip(first, second):
        assert torch.equal(img_a, img_b) and torch.equal(tgt_a["boxes"], tgt_b["boxes"])
        assert tgt_a["scale"] == tgt_b["scale"]
    other = _run(TrainTransform((64, 64), seed=8), image)
    assert [t["scale"] for _, t in first] != [t["scale"] for _, t in other]
    # scales stay inside the jitter range: 1 / (1.6 * s) with s in [0.8, 1.2]
    assert all(1 / (1.6 * 1.2) - 1e-6 <= t["scale"] <= 1 / (1.6 * 0.8) + 1e-6 for _, t in first)

    reseeded = TrainTransform((64, 64), seed=0)
    reseeded.reseed(7)
    assert [t["scale"] for _, t in _run(reseeded, image)] == [t["scale"] for _, t in first]


def test_tensor_input_matches_pil_input():
    image = _marked_image(40, 20, (4, 2, 14, 8))
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    a, ta = ResizePad((64, 64))(image, _target([[4, 2, 14, 8]]))
    b, tb = ResizePad((64, 64))(tensor, _target([[4, 2, 14, 8]]))
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])


def test_normalize_values_and_dtype():
    images = (
        torch.tensor([0, 255, 128], dtype=torch.uint8)
        .view(1, 3, 1, 1)
        .expand(2, 3, 4, 5)
        .contiguous()
    )
    out = normalize(images)
    assert out.dtype == torch.float32 and tuple(out.shape) == (2, 3, 4, 5)
    expected = [(v / 255 - m) / s for v, m, s in zip((0, 255, 128), IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor(expected), rtol=0.0, atol=1e-5)
    assert out[0, 0, 0, 0].item() == pytest.approx(-2.1179, abs=1e-4)
    assert tuple(normalize(images[0]).shape) == (3, 4, 5)
    with pytest.raises(DataError, match="uint8"):
        normalize(images.float())
    with pytest.raises(DataError, match="uint8"):
        normalize(torch.zeros((2, 1, 4, 4), dtype=torch.uint8))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": (0, 64)},
        {"size": (64,)},
        {"size": (64, 64), "scale_range": (1.2, 0.8)},
        {"size": (64, 64), "scale_range": (0.0, 1.0)},
        {"size": (64, 64), "hflip_prob": 1.5},
    ],
)
def test_bad_transform_arguments(kwargs):
    size = kwargs.pop("size")
    with pytest.raises(DataError):
        TrainTransform(size, **kwargs)
