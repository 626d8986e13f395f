"""Data pipeline: COCO-format datasets, transforms, batching and a synthetic shapes dataset.

Training-loop contract::

    train_set = load_split(data_dir, "train", transform=TrainTransform((H, W), seed=seed))
    loader = make_loader(train_set, batch_size=B, train=True, seed=seed, num_workers=n, pin_memory=cuda)
    for batch in loader:                       # DetectionBatch, uint8 images on CPU
        batch = batch.to(device)               # non_blocking by default
        x = normalize(batch.images)            # float32 [B, 3, H, W] on device
        # batch.boxes float32 [B, M, 4] xyxy canvas pixels, batch.labels int64 [B, M], -1 = padding

For evaluation use ``ResizePad((H, W))``, ``train=False`` and map predictions back with
``boxes * batch.scales[:, None, None]`` and ``dataset.label_to_category_id(label)``; the ground
truth for COCOeval is ``dataset.coco`` (crowd annotations included) over ``dataset.image_ids``.

A split lies either in the folder contract ``DIR/{train,val}/instances.json + images/`` or where
COCO puts it, given as ``CocoSplit(annotations=..., images=...)`` and opened with ``open_split``.
Before a run, ``validate_data(train, val)`` checks both splits (every record, every image file's
type, a decoded sample; see :mod:`.validate`).

To keep a GPU fed without host work per step, cache the letterboxed split on the device and
augment there (static shapes, no host synchronization)::

    cache = DeviceCache.from_dataset(load_split(data_dir, "train"), size=(H, W), device=device)
    images, boxes, labels = cache.batch(indices, augment=DeviceAugment(), generator=generator)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .coco import CocoDetection, load_split, open_split, pil_to_tensor
    from .device_cache import (
        DeviceAugment,
        DeviceCache,
        augment_batch,
        cache_nbytes,
        draw_augment_uniforms,
    )
    from .layout import (
        ANN_FILE_NAME,
        IMAGES_DIR_NAME,
        SPLITS,
        CocoSplit,
        DataError,
        check_split,
        locate_split,
        split_paths,
    )
    from .loader import (
        PAD_LABEL,
        DetectionBatch,
        collate_detection,
        make_loader,
        padded_object_count,
        seed_worker,
    )
    from .synthetic import SHAPE_CATEGORIES, SplitSummary, SyntheticSummary, make_synthetic_coco
    from .transforms import IMAGENET_MEAN, IMAGENET_STD, ResizePad, TrainTransform, normalize
    from .validate import (
        DECODE_SAMPLE,
        MAX_IMAGE_PIXELS,
        SplitCheck,
        open_image,
        validate_data,
        validate_split,
    )

#: public name -> the submodule defining it; imported on first use, so that the torch-free
#: modules (``layout``, ``validate``, ``synthetic``) load without torch
_EXPORTS = {
    **dict.fromkeys(
        (
            "ANN_FILE_NAME",
            "IMAGES_DIR_NAME",
            "SPLITS",
            "CocoSplit",
            "DataError",
            "check_split",
            "locate_split",
            "split_paths",
        ),
        "layout",
    ),
    **dict.fromkeys(("CocoDetection", "load_split", "open_split", "pil_to_tensor"), "coco"),
    **dict.fromkeys(
        (
            "DECODE_SAMPLE",
            "MAX_IMAGE_PIXELS",
            "SplitCheck",
            "open_image",
            "validate_data",
            "validate_split",
        ),
        "validate",
    ),
    **dict.fromkeys(
        ("IMAGENET_MEAN", "IMAGENET_STD", "ResizePad", "TrainTransform", "normalize"),
        "transforms",
    ),
    **dict.fromkeys(
        (
            "PAD_LABEL",
            "DetectionBatch",
            "collate_detection",
            "make_loader",
            "seed_worker",
            "padded_object_count",
        ),
        "loader",
    ),
    **dict.fromkeys(
        (
            "DeviceAugment",
            "DeviceCache",
            "augment_batch",
            "cache_nbytes",
            "draw_augment_uniforms",
        ),
        "device_cache",
    ),
    **dict.fromkeys(
        ("SHAPE_CATEGORIES", "SplitSummary", "SyntheticSummary", "make_synthetic_coco"),
        "synthetic",
    ),
}

__all__ = [
    # where a split lies
    "ANN_FILE_NAME",
    "IMAGES_DIR_NAME",
    "SPLITS",
    "CocoSplit",
    "DataError",
    "check_split",
    "locate_split",
    "split_paths",
    # dataset
    "CocoDetection",
    "load_split",
    "open_split",
    "pil_to_tensor",
    # checks before a run
    "DECODE_SAMPLE",
    "MAX_IMAGE_PIXELS",
    "SplitCheck",
    "open_image",
    "validate_data",
    "validate_split",
    # transforms
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ResizePad",
    "TrainTransform",
    "normalize",
    # batching
    "PAD_LABEL",
    "DetectionBatch",
    "collate_detection",
    "make_loader",
    "seed_worker",
    "padded_object_count",
    # device-resident data
    "DeviceAugment",
    "DeviceCache",
    "augment_batch",
    "cache_nbytes",
    "draw_augment_uniforms",
    # synthetic data
    "SHAPE_CATEGORIES",
    "SplitSummary",
    "SyntheticSummary",
    "make_synthetic_coco",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'effscale.detector.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
