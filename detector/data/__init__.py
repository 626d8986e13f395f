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

To keep a GPU fed without host work per step, cache the letterboxed split on the device and
augment there (static shapes, no host synchronization)::

    cache = DeviceCache.from_dataset(load_split(data_dir, "train"), size=(H, W), device=device)
    images, boxes, labels = cache.batch(indices, augment=DeviceAugment(), generator=generator)
"""

from .coco import (
    ANN_FILE_NAME,
    IMAGES_DIR_NAME,
    SPLITS,
    CocoDetection,
    DataError,
    load_split,
    pil_to_tensor,
    split_paths,
)
from .device_cache import (
    DeviceAugment,
    DeviceCache,
    augment_batch,
    cache_nbytes,
    draw_augment_uniforms,
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

__all__ = [
    # folder contract and dataset
    "ANN_FILE_NAME",
    "IMAGES_DIR_NAME",
    "SPLITS",
    "DataError",
    "split_paths",
    "CocoDetection",
    "load_split",
    "pil_to_tensor",
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
