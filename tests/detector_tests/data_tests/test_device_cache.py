"""DeviceCache and augment_batch: cache contents, TrainTransform geometry, drop rule, seeding, tracing."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from effscale.detector.data import (
    IMAGENET_STD,
    CocoDetection,
    DataError,
    DeviceAugment,
    DeviceCache,
    ResizePad,
    TrainTransform,
    augment_batch,
    cache_nbytes,
    collate_detection,
    draw_augment_uniforms,
    load_split,
    make_synthetic_coco,
    normalize,
)
from effscale.detector.data import device_cache as device_cache_module
from tests.detector_tests.host_reads import HostReadRecorder

SIZE = (64, 96)
# uint8 level -> normalized units, per channel
LEVEL = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD]).view(3, 1, 1)


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("device_cache") / "data"
    make_synthetic_coco(root, n_train=6, n_val=1, image_size=(48, 64), num_classes=3, seed=1)
    return root


@pytest.fixture(scope="module")
def cache(synthetic_dir) -> DeviceCache:
    return DeviceCache.from_dataset(
        load_split(synthetic_dir, "train"), size=SIZE, device="cpu", batch_decode=4
    )


def _normalized_value(rgb) -> torch.Tensor:
    """float32 [3, 1, 1]: normalize() of one uint8 colour."""
    return normalize(torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1))


def _single(canvas: torch.Tensor, boxes, labels, content_hw):
    """One-image batch tensors with M = 8 rows (labels -1 beyond the given boxes)."""
    count = len(labels)
    box_t = torch.zeros((1, 8, 4), dtype=torch.float32)
    label_t = torch.full((1, 8), -1, dtype=torch.int64)
    if count:
        box_t[0, :count] = torch.tensor(boxes, dtype=torch.float32).reshape(count, 4)
        label_t[0, :count] = torch.tensor(labels, dtype=torch.int64)
    return canvas[None], box_t, label_t, torch.tensor([content_hw], dtype=torch.float32)


# ---------------------------------------------------------------------------- the cache
def _check_against_resizepad(cache: DeviceCache, dataset: CocoDetection, size) -> None:
    reference = CocoDetection(dataset.images_dir, dataset.ann_file, transform=ResizePad(size))
    batch = collate_detection([reference[i] for i in range(len(reference))])
    assert (
        cache.device == torch.device("cpu")
        and cache.size == size
        and cache.num_images == len(reference)
    )
    assert cache.images.dtype == torch.uint8 and torch.equal(cache.images, batch.images)
    assert cache.max_objects == batch.labels.shape[1] and cache.max_objects % 8 == 0
    assert cache.boxes.dtype == torch.float32 and torch.equal(cache.boxes, batch.boxes)
    assert cache.labels.dtype == torch.int64 and torch.equal(cache.labels, batch.labels)
    padding = cache.labels == -1
    assert bool((cache.boxes[padding] == 0).all())
    assert cache.nbytes == cache_nbytes(cache.num_images, size, cache.max_objects)


def test_cache_matches_resizepad_and_collate_on_quirky_images(quirky):
    # grayscale, JPEG in a subfolder and RGBA without objects; the dataset's own transform is ignored
    own = TrainTransform(SIZE, seed=3)
    dataset = CocoDetection(*quirky, transform=own)
    cache = DeviceCache.from_dataset(dataset, size=SIZE, device="cpu", batch_decode=2)
    assert dataset.transform is own  # not modified
    _check_against_resizepad(cache, dataset, SIZE)
    # 40x20 -> r = 2.4 -> 96x48; 32x48 -> r = 4/3 -> 43x64; 16x16 -> r = 4 -> 64x64 (width x height)
    assert cache.content_hw.dtype == torch.float32
    assert cache.content_hw.tolist() == [[48.0, 96.0], [64.0, 43.0], [64.0, 64.0]]
    assert cache.max_objects == 8 and cache.labels[2].tolist() == [-1] * 8


def test_cache_matches_resizepad_on_synthetic_split_and_subset(synthetic_dir, cache):
    dataset = load_split(synthetic_dir, "train")
    _check_against_resizepad(cache, dataset, SIZE)
    # 48x64 (HxW) into 64x96: r = min(64/48, 96/64) = 4/3 -> 64 x 85.33 -> 85
    assert cache.content_hw.tolist() == [[64.0, 85.0]] * 6
    assert cache.nbytes == 6 * (3 * 64 * 96 + cache.max_objects * 24 + 8)

    part = DeviceCache.from_dataset(
        Subset(dataset, [4, 1]), size=SIZE, device="cpu", quiet=True, num_workers=1
    )
    assert torch.equal(part.images, cache.images[[4, 1]])
    count = part.max_objects
    assert torch.equal(part.labels, cache.labels[[4, 1], :count])
    assert bool((cache.labels[[4, 1], count:] == -1).all())


def test_progress_bar_path_runs(synthetic_dir, monkeypatch):
    monkeypatch.setattr(device_cache_module, "PROGRESS_MIN_IMAGES", 1)
    shown = DeviceCache.from_dataset(load_split(synthetic_dir, "val"), size=(32, 32), device="cpu")
    assert shown.num_images == 1 and shown.size == (32, 32)


def test_batch_without_augment_is_normalize_of_the_canvases(cache):
    indices = torch.tensor([5, 0, 5, 2])
    images, boxes, labels = cache.batch(indices, augment=None)
    assert images.dtype == torch.float32 and tuple(images.shape) == (4, 3, *SIZE)
    assert torch.equal(images, normalize(cache.images[indices]))
    assert torch.equal(boxes, cache.boxes[indices]) and torch.equal(labels, cache.labels[indices])


# ---------------------------------------------------------------------------- geometry
def test_identity_augment_samples_pixel_centres(cache):
    indices = torch.arange(cache.num_images)
    augment = DeviceAugment(scale_range=(1.0, 1.0), hflip_prob=0.0)
    generator = torch.Generator().manual_seed(0)
    images, boxes, labels = cache.batch(indices, augment=augment, generator=generator)
    torch.testing.assert_close(images, normalize(cache.images), rtol=0.0, atol=1e-4)
    assert (
        int((cache.labels >= 0).sum()) > 6
    )  # real objects, all at least 8 px: none may be dropped
    assert torch.equal(labels, cache.labels)
    torch.testing.assert_close(boxes, cache.boxes, rtol=0.0, atol=1e-5)


def test_flip_mirrors_content_and_boxes(cache):
    indices = torch.arange(cache.num_images)
    augment = DeviceAugment(scale_range=(1.0, 1.0), hflip_prob=1.0)
    images, boxes, labels = cache.batch(
        indices, augment=augment, generator=torch.Generator().manual_seed(1)
    )
    content_h, content_w = 64, 85
    expected = torch.zeros_like(cache.images)
    expected[..., :content_h, :content_w] = cache.images[..., :content_h, :content_w].flip(-1)
    torch.testing.assert_close(images, normalize(expected), rtol=0.0, atol=1e-4)
    valid = cache.labels >= 0
    assert torch.equal(labels, cache.labels)
    src = cache.boxes
    mirrored = torch.stack(
        [content_w - src[..., 2], src[..., 1], content_w - src[..., 0], src[..., 3]], dim=-1
    )
    torch.testing.assert_close(boxes[valid], mirrored[valid], rtol=0.0, atol=1e-4)
    assert bool((boxes[~valid] == 0).all())


@pytest.mark.parametrize("flip", [False, True])
def test_scale_two_puts_the_object_where_the_box_says(flip):
    # canvas 64x64 holding 64 (h) x 30 (w) content: background A, object B over x 10..26, y 20..36
    background, colour = (40, 80, 120), (220, 200, 30)
    canvas = torch.zeros((3, 64, 64), dtype=torch.uint8)
    canvas[:, :, :30] = torch.tensor(background, dtype=torch.uint8).view(3, 1, 1)
    canvas[:, 20:36, 10:26] = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1)
    batch = _single(canvas, [[10, 20, 26, 36]], [2], (64.0, 30.0))
    # scale 2: content 128 x 60; x0 = 0 (60 <= 64), y0 = 0.5 * (128 - 64) = 32; flip iff u1 < 0.5
    uniforms = torch.tensor([[0.3, 0.1 if flip else 0.9, 0.7, 0.5]])
    images, boxes, labels = augment_batch(
        *batch,
        size=(64, 64),
        augment=DeviceAugment(scale_range=(2.0, 2.0), hflip_prob=0.5),
        uniforms=uniforms,
    )
    x1, x2 = (60 - 52, 60 - 20) if flip else (20, 52)
    assert boxes[0, 0].tolist() == [x1, 8, x2, 40] and labels[0].tolist() == [2] + [-1] * 7
    out = images[0]
    inside = out[:, 9:39, x1 + 1 : x2 - 1]
    torch.testing.assert_close(
        inside, _normalized_value(colour).expand_as(inside), rtol=0.0, atol=1e-4
    )
    around = torch.ones((64, 64), dtype=torch.bool)
    around[7:41, x1 - 1 : x2 + 1] = False
    around[:, 60:] = False
    background_px = out[:, around]
    torch.testing.assert_close(
        background_px,
        _normalized_value(background).view(3, 1).expand_as(background_px),
        rtol=0.0,
        atol=1e-4,
    )
    # columns past the visible content (s * cw - x0 = 60) are the zero padding
    torch.testing.assert_close(
        out[:, :, 60:], _normalized_value((0, 0, 0)).expand(3, 64, 4), rtol=0.0, atol=1e-4
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("hflip_prob", [0.0, 1.0])
def test_matches_train_transform_for_the_same_draw(seed, hflip_prob):
    # a textured 64 (h) x 48 (w) image is its own ResizePad canvas, so both paths resample it once
    pil = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 48, 3), dtype=np.uint8))
    boxes = [[10, 12, 30, 40], [0, 0, 48, 64], [38, 2, 46, 20], [30, 30, 34, 60], [1, 40, 30, 63]]
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.arange(5),
        "image_id": 1,
        "scale": 1.0,
        "orig_size": (64, 48),
    }
    expected, expected_target = TrainTransform(
        (64, 48), scale_range=(2.0, 2.0), hflip_prob=hflip_prob, seed=seed
    )(pil, dict(target))
    rng = random.Random(seed)  # TrainTransform's draw order: scale, flip, crop x, crop y
    rng.uniform(2.0, 2.0), rng.random()
    x0, y0 = rng.randint(0, 96 - 48), rng.randint(0, 128 - 64)

    canvas, _ = ResizePad((64, 48))(pil, dict(target))
    uniforms = torch.tensor([[0.5, 0.0 if hflip_prob else 0.99, x0 / 48, y0 / 64]])
    images, out_boxes, out_labels = augment_batch(
        *_single(canvas, boxes, list(range(5)), (64.0, 48.0)),
        size=(64, 48),
        augment=DeviceAugment(scale_range=(2.0, 2.0), hflip_prob=0.5),
        uniforms=uniforms,
    )
    # PIL resizes in two passes rounding to uint8 in between: at most 1 level apart
    levels = (images[0] - normalize(expected)).abs() / LEVEL
    assert float(levels.max()) <= 1.0 + 1e-3 and float(levels.mean()) < 0.5
    valid = out_labels[0] >= 0
    assert out_labels[0][valid].tolist() == expected_target["labels"].tolist()
    torch.testing.assert_close(out_boxes[0][valid], expected_target["boxes"], rtol=0.0, atol=1e-4)
    assert bool((out_boxes[0][~valid] == 0).all())


def test_drop_rule_matches_train_transform_exact_numbers():
    # the TrainTransform test case: 32x32 canvas, scale 2, no flip, crop x0 = 3, y0 = 5
    boxes = [
        [0, 0, 32, 32],  # -> clipped [0, 0, 32, 32]: keeps exactly 25% -> kept
        [1, 1, 3, 3],  # -> [0, 0, 3, 1]: 1 px tall -> dropped
        [10, 10, 14, 12],  # -> [17, 15, 25, 19] inside -> kept
        [15, 0, 20, 3],  # -> [27, 0, 32, 1] -> dropped
        [12, 14, 20, 18],  # -> [21, 23, 32, 31]: 69% kept -> kept
        [14, 15, 16.5, 30],  # -> [25, 25, 30, 32]: 23% kept -> dropped (mostly out of view)
        [14, 15, 16.5, 27],  # -> [25, 25, 30, 32]: 29% kept -> kept
    ]
    canvas = torch.full((3, 32, 32), 90, dtype=torch.uint8)
    uniforms = torch.tensor([[0.0, 0.9, 3 / 32, 5 / 32]])
    _, out_boxes, out_labels = augment_batch(
        *_single(canvas, boxes, list(range(7)), (32.0, 32.0)),
        size=(32, 32),
        augment=DeviceAugment(scale_range=(2.0, 2.0), hflip_prob=0.0),
        uniforms=uniforms,
    )
    assert out_labels[0].tolist() == [0, -1, 2, -1, 4, -1, 6, -1]
    zero = [0, 0, 0, 0]
    assert out_boxes[0].tolist() == [
        [0, 0, 32, 32],
        zero,
        [17, 15, 25, 19],
        zero,
        [21, 23, 32, 31],
        zero,
        [25, 25, 30, 32],
        zero,
    ]


# ---------------------------------------------------------------------------- randomness
def test_same_seed_same_batch_and_documented_draw(cache):
    indices = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    augment = DeviceAugment()

    def run(seed):
        return cache.batch(indices, augment=augment, generator=torch.Generator().manual_seed(seed))

    first, again, other = run(11), run(11), run(12)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])
    # the draw is exactly one torch.rand((B, 4)) from the generator
    uniforms = draw_augment_uniforms(8, device="cpu", generator=torch.Generator().manual_seed(11))
    assert tuple(uniforms.shape) == (8, 4)
    explicit = cache.batch(indices, augment=augment, uniforms=uniforms)
    assert all(torch.equal(a, b) for a, b in zip(first, explicit))


@pytest.mark.parametrize("hflip_prob", [0.5, 0.2])
def test_scale_and_flip_statistics(hflip_prob):
    # 400 images of 64x64 canvas with 32x32 content: s * 32 <= 38.4 never crops, so the box
    # [0, 0, 8, 32] becomes [0, 0, 8 s, 32 s] or, flipped, [24 s, 0, 32 s, 32 s]
    count = 400
    images = torch.zeros((count, 3, 64, 64), dtype=torch.uint8)
    boxes = torch.zeros((count, 8, 4))
    boxes[:, 0] = torch.tensor([0.0, 0.0, 8.0, 32.0])
    labels = torch.full((count, 8), -1, dtype=torch.int64)
    labels[:, 0] = 1
    content_hw = torch.full((count, 2), 32.0)
    augment = DeviceAugment(scale_range=(0.8, 1.2), hflip_prob=hflip_prob)
    _, out, out_labels = augment_batch(
        images,
        boxes,
        labels,
        content_hw,
        size=(64, 64),
        augment=augment,
        generator=torch.Generator().manual_seed(3),
    )
    assert bool((out_labels[:, 0] == 1).all())
    scale = out[:, 0, 3] / 32.0
    flipped = out[:, 0, 0] > 0
    assert 0.8 - 1e-5 <= float(scale.min()) < 0.85 and 1.15 < float(scale.max()) <= 1.2 + 1e-5
    assert abs(float(scale.mean()) - 1.0) < 0.02  # standard error 0.006
    assert abs(float(flipped.float().mean()) - hflip_prob) < 0.08
    width = torch.where(flipped, out[:, 0, 2] - out[:, 0, 0], out[:, 0, 2])
    torch.testing.assert_close(width, 8.0 * scale)


# ---------------------------------------------------------------------------- no host sync, traceable
def test_batch_reads_no_value_back_and_makes_no_host_tensor(cache):
    indices = torch.tensor([3, 1, 4, 1])
    generator = torch.Generator().manual_seed(0)
    with HostReadRecorder() as recorder:
        images, boxes, labels = cache.batch(indices, augment=DeviceAugment(), generator=generator)
        plain = cache.batch(indices, augment=None)
    assert recorder.bad == []
    assert tuple(boxes.shape) == (4, cache.max_objects, 4) and tuple(labels.shape) == (
        4,
        cache.max_objects,
    )
    assert tuple(images.shape) == tuple(plain[0].shape) == (4, 3, *SIZE)


def test_dynamo_traces_without_graph_breaks(cache):
    torch._dynamo.reset()
    indices = torch.tensor([2, 0, 5])
    augment = DeviceAugment(scale_range=(0.7, 1.6), hflip_prob=0.5)
    content_hw = cache.content_hw[indices]
    args = (cache.images[indices], cache.boxes[indices], cache.labels[indices], content_hw)
    compiled_augment = torch.compile(augment_batch, fullgraph=True, backend="eager")
    compiled_batch = torch.compile(cache.batch, fullgraph=True, backend="eager")
    with torch.random.fork_rng():
        for seed in (0, 1):  # torch's default generator: the only one dynamo can trace
            torch.manual_seed(seed)
            eager = augment_batch(*args, size=SIZE, augment=augment)
            torch.manual_seed(seed)
            traced = compiled_augment(*args, size=SIZE, augment=augment)
            assert all(torch.equal(a, b) for a, b in zip(eager, traced))
            torch.manual_seed(seed)
            eager = cache.batch(indices, augment=augment)
            torch.manual_seed(seed)
            traced = compiled_batch(indices, augment=augment)
            assert all(torch.equal(a, b) for a, b in zip(eager, traced))
    uniforms = draw_augment_uniforms(3, device="cpu", generator=torch.Generator().manual_seed(4))
    eager = cache.batch(indices, augment=augment, uniforms=uniforms)
    assert all(
        torch.equal(a, b)
        for a, b in zip(eager, compiled_batch(indices, augment=augment, uniforms=uniforms))
    )
    assert all(torch.equal(a, b) for a, b in zip(cache.batch(indices), compiled_batch(indices)))
    torch._dynamo.reset()


# ---------------------------------------------------------------------------- bad input
def test_empty_or_wrong_dataset_is_a_data_error(synthetic_dir):
    dataset = load_split(synthetic_dir, "train")
    with pytest.raises(DataError, match="no images"):
        DeviceCache.from_dataset(Subset(dataset, []), size=SIZE, device="cpu")
    with pytest.raises(DataError, match="CocoDetection"):
        DeviceCache.from_dataset(
            [(torch.zeros(3, 4, 4, dtype=torch.uint8), {})], size=SIZE, device="cpu"
        )
    with pytest.raises(DataError, match="batch_decode"):
        DeviceCache.from_dataset(dataset, size=SIZE, device="cpu", batch_decode=0)
    with pytest.raises(DataError, match="size"):
        DeviceCache.from_dataset(dataset, size=(0, 64), device="cpu")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"scale_range": (1.2, 0.8)}, "scale_range"),
        ({"scale_range": (0.0, 1.0)}, "scale_range"),
        ({"scale_range": (1.0,)}, "scale_range"),
        ({"hflip_prob": 1.5}, "hflip_prob"),
        ({"hflip_prob": True}, "hflip_prob"),
    ],
)
def test_bad_device_augment_names_the_field(kwargs, field):
    with pytest.raises(DataError, match=field):
        DeviceAugment(**kwargs)


def test_bad_batch_inputs_are_data_errors(cache):
    augment = DeviceAugment()
    with pytest.raises(DataError, match="int64"):
        cache.batch(torch.tensor([0, 1], dtype=torch.int32), augment=None)
    args = (cache.images[:2], cache.boxes[:2], cache.labels[:2], cache.content_hw[:2])
    with pytest.raises(DataError, match="uint8"):
        augment_batch(args[0].float(), *args[1:], size=SIZE, augment=augment)
    with pytest.raises(DataError, match="size"):
        augment_batch(*args, size=(32, 32), augment=augment)
    with pytest.raises(DataError, match="labels"):
        augment_batch(args[0], args[1], args[2][:, :3], args[3], size=SIZE, augment=augment)
    with pytest.raises(DataError, match="generator and uniforms"):
        augment_batch(
            *args,
            size=SIZE,
            augment=augment,
            generator=torch.Generator(),
            uniforms=torch.rand(2, 4),
        )
    with pytest.raises(DataError, match="num_images"):
        cache_nbytes(0, SIZE, 8)
    with pytest.raises(DataError, match="multiple of 8"):
        DeviceCache(cache.images, cache.boxes[:, :5], cache.labels[:, :5], cache.content_hw)
    with pytest.raises(DataError, match="DeviceCache content_hw"):
        DeviceCache(cache.images, cache.boxes, cache.labels, cache.content_hw.double())
    assert cache_nbytes(10, (32, 64), 16) == 10 * (3 * 32 * 64 + 16 * 16 + 16 * 8 + 8)
