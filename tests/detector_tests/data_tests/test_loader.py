"""collate_detection, DetectionBatch and make_loader: padding, dtypes, order and seeding."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from effscale.detector.data import (
    CocoDetection,
    DataError,
    DetectionBatch,
    ResizePad,
    TrainTransform,
    collate_detection,
    load_split,
    make_loader,
    make_synthetic_coco,
)


def _item(n_objects, *, image_id=1, size=(32, 48), scale=0.5):
    boxes = torch.arange(n_objects * 4, dtype=torch.float32).reshape(n_objects, 4)
    target = {
        "boxes": boxes,
        "labels": torch.arange(n_objects, dtype=torch.int64) % 3,
        "image_id": image_id,
        "scale": scale,
        "orig_size": (size[0] * 2, size[1] * 2),
    }
    return torch.full((3, *size), image_id, dtype=torch.uint8), target


def test_collate_pads_to_multiple_of_eight():
    batch = collate_detection([_item(3, image_id=5), _item(0, image_id=6, scale=1.25)])
    assert isinstance(batch, DetectionBatch) and len(batch) == 2
    assert batch.images.dtype == torch.uint8 and tuple(batch.images.shape) == (2, 3, 32, 48)
    assert batch.boxes.dtype == torch.float32 and tuple(batch.boxes.shape) == (2, 8, 4)
    assert batch.labels.dtype == torch.int64 and tuple(batch.labels.shape) == (2, 8)
    assert batch.labels.tolist() == [[0, 1, 2, -1, -1, -1, -1, -1], [-1] * 8]
    assert batch.boxes[0, :3].tolist() == torch.arange(12.0).reshape(3, 4).tolist()
    assert float(batch.boxes[0, 3:].abs().sum()) == 0.0 and float(batch.boxes[1].abs().sum()) == 0.0
    assert batch.image_ids.dtype == torch.int64 and batch.image_ids.tolist() == [5, 6]
    assert batch.scales.dtype == torch.float32 and batch.scales.tolist() == [0.5, 1.25]
    assert batch.orig_sizes.dtype == torch.int64 and batch.orig_sizes.tolist() == [
        [64, 96],
        [64, 96],
    ]
    assert batch.num_objects.tolist() == [3, 0]
    unpadded = batch.targets()
    assert unpadded[0]["labels"].tolist() == [0, 1, 2] and tuple(unpadded[1]["boxes"].shape) == (
        0,
        4,
    )


@pytest.mark.parametrize("count, padded", [(0, 8), (1, 8), (8, 8), (9, 16), (17, 24)])
def test_padded_object_count(count, padded):
    assert collate_detection([_item(count)]).labels.shape[1] == padded


def test_batch_is_frozen_and_moves():
    batch = collate_detection([_item(2)])
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.images = batch.images
    moved = batch.to("cpu", non_blocking=False)
    assert isinstance(moved, DetectionBatch) and torch.equal(moved.boxes, batch.boxes)
    assert torch.equal(batch.to(torch.device("cpu")).labels, batch.labels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs a CUDA device")
def test_pin_memory_and_device_copy():
    batch = collate_detection([_item(2)]).pin_memory()
    assert batch.images.is_pinned() and batch.labels.is_pinned()
    on_gpu = batch.to("cuda")
    assert on_gpu.images.is_cuda and torch.equal(on_gpu.boxes.cpu(), batch.boxes)


def test_collate_rejects_mixed_sizes_and_float_images():
    with pytest.raises(DataError, match="ResizePad"):
        collate_detection([_item(1, size=(32, 48)), _item(1, size=(48, 32))])
    image, target = _item(1)
    with pytest.raises(DataError, match="uint8"):
        collate_detection([(image.float(), target)])
    with pytest.raises(DataError, match="empty batch"):
        collate_detection([])


def test_eval_loader_keeps_order_and_every_image(quirky):
    ds = CocoDetection(*quirky, transform=ResizePad((64, 64)))
    batches = list(make_loader(ds, batch_size=2, train=False))
    assert [b.image_ids.tolist() for b in batches] == [[10, 20], [30]]
    assert batches[0].labels.tolist() == [[1] + [-1] * 7, [2, 0] + [-1] * 6]
    torch.testing.assert_close(batches[0].boxes[0, 0], torch.tensor([7.2, 3.6, 23.2, 12.4]))
    assert batches[0].scales.tolist() == pytest.approx([0.625, 48 / 64])
    assert batches[1].orig_sizes.tolist() == [[16, 16]]


def test_train_loader_is_seeded(quirky):
    def epoch_ids(seed):
        ds = CocoDetection(*quirky, transform=TrainTransform((64, 64), seed=123))
        loader = make_loader(ds, batch_size=1, train=True, seed=seed)
        return [(b.image_ids.item(), b.scales.item(), b.boxes.sum().item()) for b in loader]

    assert epoch_ids(1) == epoch_ids(1)
    orders = {tuple(i for i, _, _ in epoch_ids(s)) for s in range(6)}
    assert len(orders) > 1 and all(sorted(o) == [10, 20, 30] for o in orders)


def test_train_loader_drops_last_and_checks_size(quirky):
    ds = CocoDetection(*quirky, transform=ResizePad((32, 32)))
    assert len(make_loader(ds, batch_size=2, train=True)) == 1
    assert len(make_loader(ds, batch_size=2, train=True, drop_last=False)) == 2
    with pytest.raises(DataError, match="fewer than batch_size=4"):
        make_loader(ds, batch_size=4, train=True)
    with pytest.raises(DataError, match="batch_size"):
        make_loader(ds, batch_size=0, train=False)


def test_workers_are_seeded_and_differ(tmp_path):
    make_synthetic_coco(tmp_path / "ds", n_train=8, n_val=1, image_size=(64, 64), seed=1)

    def run():
        ds = load_split(tmp_path / "ds", "train", transform=TrainTransform((64, 64), seed=0))
        loader = make_loader(ds, batch_size=2, train=True, num_workers=2, seed=11)
        return [(b.image_ids.tolist(), b.scales.tolist()) for b in loader]

    first = run()
    assert first == run()
    scales = [s for _, batch_scales in first for s in batch_scales]
    assert len(set(scales)) == len(scales)  # every sample drew its own jitter
