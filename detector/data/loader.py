"""Batching: padded fixed-layout batches and seeded DataLoaders.

A :class:`DetectionBatch` holds ``B`` images of one size and their targets padded to ``M``
objects, with ``labels == -1`` marking padding. ``M`` is the largest object count in the batch
rounded up to a multiple of 8 (at least 8), which keeps the number of distinct shapes small.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .coco import DataError

__all__ = [
    "PAD_LABEL",
    "OBJECTS_MULTIPLE",
    "DetectionBatch",
    "collate_detection",
    "make_loader",
    "padded_object_count",
    "seed_worker",
]

#: label of padding rows in :attr:`DetectionBatch.labels`
PAD_LABEL = -1
#: the padded object count ``M`` is a multiple of this (and at least this)
OBJECTS_MULTIPLE = 8


@dataclass(frozen=True)
class DetectionBatch:
    """A collated batch; every tensor has batch size ``B`` first.

    Attributes:
        images: ``torch.uint8`` ``[B, 3, H, W]`` RGB canvases (normalize on the device with
            :func:`~effscale.detector.data.transforms.normalize`).
        boxes: ``torch.float32`` ``[B, M, 4]`` ``(x1, y1, x2, y2)`` in canvas pixels, 0 where padded.
        labels: ``torch.int64`` ``[B, M]`` contiguous labels, ``-1`` where padded (no object).
        image_ids: ``torch.int64`` ``[B]`` COCO image ids.
        scales: ``torch.float32`` ``[B]`` original-image pixels per canvas pixel
            (``original_boxes = boxes * scales[:, None, None]`` for eval transforms).
        orig_sizes: ``torch.int64`` ``[B, 2]`` original ``(height, width)`` in pixels.
    """

    images: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    image_ids: torch.Tensor
    scales: torch.Tensor
    orig_sizes: torch.Tensor

    def _map(self, fn) -> DetectionBatch:
        return dataclasses.replace(
            self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)}
        )

    def to(self, device: torch.device | str, *, non_blocking: bool = True) -> DetectionBatch:
        """A copy with every tensor on ``device`` (asynchronous from pinned memory by default)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> DetectionBatch:
        """A copy with every tensor in page-locked memory (used by ``DataLoader(pin_memory=True)``)."""
        return self._map(lambda t: t.pin_memory())

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def valid(self) -> torch.Tensor:
        """``torch.bool`` ``[B, M]``: True where a row is a real object."""
        return self.labels >= 0

    @property
    def num_objects(self) -> torch.Tensor:
        """``torch.int64`` ``[B]``: real objects per image."""
        return self.valid.sum(dim=1)

    def targets(self) -> list[dict[str, torch.Tensor]]:
        """Unpadded per-image targets: ``[{"boxes": float32 [N_i, 4], "labels": int64 [N_i]}, ...]``."""
        valid = self.valid
        return [
            {"boxes": self.boxes[i][valid[i]], "labels": self.labels[i][valid[i]]}
            for i in range(len(self))
        ]


def padded_object_count(count: int) -> int:
    """Rows ``M`` that ``count`` objects are padded to: ``max(8, ceil(count / 8) * 8)``."""
    return max(OBJECTS_MULTIPLE, -(-count // OBJECTS_MULTIPLE) * OBJECTS_MULTIPLE)


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> DetectionBatch:
    """Collate ``(image, target)`` items of :class:`~effscale.detector.data.coco.CocoDetection` into a batch.

    Args:
        batch: items whose images are ``uint8`` ``[3, H, W]`` tensors of one common ``(H, W)``
            (use :class:`ResizePad` or :class:`TrainTransform`) and whose targets hold
            ``boxes`` ``[N, 4]``, ``labels`` ``[N]``, ``image_id``, ``scale`` and ``orig_size``.

    Returns:
        A :class:`DetectionBatch` padded to ``M = max(8, ceil(max N / 8) * 8)`` objects.

    Raises:
        DataError: the batch is empty, images are not ``uint8`` ``[3, H, W]`` or differ in size.
    """
    if len(batch) == 0:
        raise DataError("collate_detection got an empty batch; use batch_size >= 1")
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    first = images[0]
    for image in images:
        if (
            not isinstance(image, torch.Tensor)
            or image.dtype != torch.uint8
            or image.ndim != 3
            or image.shape[0] != 3
        ):
            described = (
                f"{image.dtype} {list(image.shape)}"
                if isinstance(image, torch.Tensor)
                else type(image).__name__
            )
            raise DataError(
                f"collate_detection needs uint8 [3, H, W] images, got {described}; keep images uint8 until normalize"
            )
        if image.shape != first.shape:
            raise DataError(
                f"collate_detection got images of sizes {list(first.shape[1:])} and {list(image.shape[1:])}; "
                "give the dataset a ResizePad or TrainTransform transform so all images share one size"
            )
    counts = [int(torch.as_tensor(t["labels"]).numel()) for t in targets]
    size = len(batch)
    padded = padded_object_count(max(counts))
    boxes = torch.zeros((size, padded, 4), dtype=torch.float32)
    labels = torch.full((size, padded), PAD_LABEL, dtype=torch.int64)
    for i, (target, count) in enumerate(zip(targets, counts)):
        if count:
            boxes[i, :count] = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(
                count, 4
            )
            labels[i, :count] = torch.as_tensor(target["labels"], dtype=torch.int64).reshape(count)
    return DetectionBatch(
        images=torch.stack(images),
        boxes=boxes,
        labels=labels,
        image_ids=torch.tensor([int(t["image_id"]) for t in targets], dtype=torch.int64),
        scales=torch.tensor([float(t.get("scale", 1.0)) for t in targets], dtype=torch.float32),
        orig_sizes=torch.tensor(
            [[int(v) for v in t["orig_size"]] for t in targets], dtype=torch.int64
        ),
    )


def _reseed_transforms(dataset: Any, seed: int) -> None:
    """Reseed every ``transform`` with a ``reseed`` method found on ``dataset`` or wrapped datasets."""
    seen: set[int] = set()
    pending = [dataset]
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        reseed = getattr(getattr(node, "transform", None), "reseed", None)
        if callable(reseed):
            reseed(seed)
        pending.append(getattr(node, "dataset", None))  # torch Subset and similar wrappers
        pending.extend(getattr(node, "datasets", None) or ())  # ConcatDataset


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed ``random``, numpy and the dataset's transforms.

    Uses the per-worker seed torch derives from the loader's generator, so a loader made with a
    given ``seed`` produces the same augmentations in every run.
    """
    info = get_worker_info()
    seed = int(info.seed) if info is not None else int(torch.initial_seed())
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if info is not None:
        _reseed_transforms(info.dataset, seed % 2**63)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    pin_memory: bool = False,
    seed: int = 0,
    drop_last: bool | None = None,
) -> DataLoader:
    """A DataLoader yielding :class:`DetectionBatch` es.

    Args:
        dataset: a map-style dataset of ``(image, target)`` items, typically
            :class:`~effscale.detector.data.coco.CocoDetection` with a fixed-size transform.
        batch_size: images per batch, ``>= 1``.
        train: shuffle (with a ``torch.Generator`` seeded by ``seed``) and, by default, drop the
            last incomplete batch; evaluation keeps the dataset order and every image.
        num_workers: worker processes (0 loads in the main process).
        pin_memory: pin batches so ``batch.to(device, non_blocking=True)`` is asynchronous.
        seed: seed of the shuffling order and of the augmentation streams. With
            ``num_workers == 0`` the dataset's transform is reseeded from ``seed`` here, once;
            with workers, every worker reseeds it from torch's per-worker seed at start-up (each
            epoch, unless workers persist), so a given seed gives the same batches on CPU.
        drop_last: drop the last incomplete batch; default ``train``.

    Raises:
        DataError: bad ``batch_size``/``num_workers``, an empty dataset, or a training loader that
            would yield no batch because the dataset is smaller than ``batch_size``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DataError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    size = len(dataset)  # type: ignore[arg-type]  # torch's Dataset declares no __len__
    if size == 0:
        raise DataError("make_loader got an empty dataset; check the dataset folder and subset")
    drop_last = bool(train) if drop_last is None else bool(drop_last)
    if drop_last and size < batch_size:
        raise DataError(
            f"dataset has {size} images, fewer than batch_size={batch_size}, so no full batch exists; "
            "lower the batch size or use more images"
        )
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    if num_workers == 0:
        _reseed_transforms(dataset, int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=bool(train),
        num_workers=num_workers,
        collate_fn=collate_detection,
        pin_memory=bool(pin_memory),
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=seed_worker if num_workers > 0 else None,
    )
