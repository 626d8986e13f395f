"""A hand-made COCO dataset with every quirk the pipeline must cope with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

# categories listed out of order with non-contiguous ids: sorted ids (3, 7, 12) -> labels (0, 1, 2)
CATEGORIES = [
    {"id": 12, "name": "zebra", "supercategory": "animal"},
    {"id": 3, "name": "cat", "supercategory": "animal"},
    {"id": 7, "name": "dog", "supercategory": "animal"},
]

IMAGES = [
    # grayscale PNG, 40 wide x 20 high, constant value 200
    {"id": 10, "file_name": "gray.png", "width": 40, "height": 20},
    # RGB JPEG in a subfolder, 32 wide x 48 high
    {"id": 20, "file_name": "sub/dir/rgb.jpg", "width": 32, "height": 48},
    # RGBA PNG without annotations, 16 x 16
    {"id": 30, "file_name": "empty.png", "width": 16, "height": 16},
]

ANNOTATIONS = [
    # float xywh box on the grayscale image, category 7 -> label 1
    {
        "id": 1,
        "image_id": 10,
        "category_id": 7,
        "bbox": [4.5, 2.25, 10.0, 5.5],
        "area": 55.0,
        "iscrowd": 0,
    },
    # crowd region: kept in the json for evaluation, never a training target
    {
        "id": 2,
        "image_id": 10,
        "category_id": 3,
        "bbox": [0.0, 0.0, 20.0, 10.0],
        "area": 200.0,
        "iscrowd": 1,
    },
    # zero-width box: dropped
    {
        "id": 3,
        "image_id": 10,
        "category_id": 12,
        "bbox": [30.0, 5.0, 0.0, 4.0],
        "area": 0.0,
        "iscrowd": 0,
    },
    {
        "id": 4,
        "image_id": 20,
        "category_id": 12,
        "bbox": [8.0, 16.0, 16.5, 8.0],
        "area": 132.0,
        "iscrowd": 0,
    },
    {
        "id": 5,
        "image_id": 20,
        "category_id": 3,
        "bbox": [0.0, 0.0, 8.0, 8.0],
        "area": 64.0,
    },  # no iscrowd key
]


def write_quirky_coco(root: Path) -> tuple[Path, Path]:
    """Write the quirky dataset under ``root``; returns ``(images_dir, ann_file)``."""
    images_dir = root / "images"
    (images_dir / "sub" / "dir").mkdir(parents=True)
    Image.new("L", (40, 20), color=200).save(images_dir / "gray.png")
    rgb = Image.new("RGB", (32, 48), color=(200, 30, 30))
    rgb.save(images_dir / "sub" / "dir" / "rgb.jpg", quality=95)
    Image.new("RGBA", (16, 16), color=(10, 20, 30, 0)).save(images_dir / "empty.png")
    ann_file = root / "instances.json"
    ann_file.write_text(
        json.dumps({"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES})
    )
    return images_dir, ann_file


@pytest.fixture
def quirky(tmp_path: Path) -> tuple[Path, Path]:
    """``(images_dir, ann_file)`` of the quirky dataset in a fresh folder."""
    return write_quirky_coco(tmp_path / "quirky")
