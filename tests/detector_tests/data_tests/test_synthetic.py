"""make_synthetic_coco: reproducible bytes, the COCO layout, class coverage, sizes and occlusion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from effscale.detector.data import (
    SHAPE_CATEGORIES,
    DataError,
    ResizePad,
    load_split,
    make_loader,
    make_synthetic_coco,
)
from effscale.detector.data.synthetic import MAX_OCCLUSION, MIN_OBJECT_SIZE


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "shapes"
    summary = make_synthetic_coco(root, n_train=40, n_val=8, seed=3, image_size=(64, 64))
    assert summary.root == root
    return root


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    kwargs = dict(n_train=5, n_val=2, image_size=(64, 96))
    make_synthetic_coco(tmp_path / "a", seed=7, **kwargs)
    make_synthetic_coco(tmp_path / "b", seed=7, **kwargs)
    make_synthetic_coco(tmp_path / "c", seed=8, **kwargs)
    a, b, c = (_digest(tmp_path / name) for name in "abc")
    assert len(a) == 5 + 2 + 2
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)
    # no leftovers from the atomic write next to the datasets
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_first_images_do_not_depend_on_count(tmp_path):
    make_synthetic_coco(tmp_path / "few", n_train=2, n_val=1, seed=5, image_size=64)
    make_synthetic_coco(tmp_path / "more", n_train=4, n_val=1, seed=5, image_size=64)
    few, more = _digest(tmp_path / "few"), _digest(tmp_path / "more")
    assert few["train/images/000001.png"] == more["train/images/000001.png"]
    assert few["train/images/000002.png"] == more["train/images/000002.png"]


def test_layout_and_summary(tmp_path):
    summary = make_synthetic_coco(tmp_path / "ds", n_train=3, n_val=2, seed=0, image_size=(64, 96))
    train = summary.split("train")
    assert train.ann_file == tmp_path / "ds" / "train" / "instances.json"
    assert train.images_dir == tmp_path / "ds" / "train" / "images"
    assert (train.num_images, summary.split("val").num_images) == (3, 2)
    data = json.loads(train.ann_file.read_text())
    assert [img["file_name"] for img in data["images"]] == [
        "000001.png",
        "000002.png",
        "000003.png",
    ]
    assert {(img["width"], img["height"]) for img in data["images"]} == {(96, 64)}
    assert train.num_objects == len(data["annotations"])
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    assert summary.image_size == (64, 96) and "3 train + 2 val" in summary.describe()


def test_loads_back_with_non_contiguous_ids(shapes):
    ds = load_split(shapes, "train", transform=ResizePad((64, 64)))
    assert len(ds) == 40 and ds.num_classes == 6
    assert ds.category_ids == (1, 2, 3, 5, 7, 9)
    assert ds.category_names == ("circle", "square", "triangle", "cross", "ring", "star")
    image, target = ds[0]
    assert tuple(image.shape) == (3, 64, 64) and target["scale"] == 1.0
    batch = next(iter(make_loader(ds, batch_size=4, train=False)))
    assert tuple(batch.images.shape) == (4, 3, 64, 64) and int(batch.num_objects.sum()) > 0
    assert len(load_split(shapes, "val")) == 8


def test_classes_sizes_and_occlusion(shapes):
    data = json.loads((shapes / "train" / "instances.json").read_text())
    anns = data["annotations"]
    assert {a["category_id"] for a in anns} == {1, 2, 3, 5, 7, 9}
    boxes = np.array([a["bbox"] for a in anns])
    long_side, short_side = boxes[:, 2:].max(axis=1), boxes[:, 2:].min(axis=1)
    assert short_side.min() >= MIN_OBJECT_SIZE and long_side.min() <= 10
    assert long_side.max() <= 32 and long_side.max() >= 28  # half of the 64 px side
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 64).all()
    assert (boxes[:, 1] + boxes[:, 3] <= 64).all()
    squares = boxes[[a["category_id"] == 2 for a in anns]]
    assert (squares[:, 2] == squares[:, 3]).all()

    by_image: dict[int, list[list[float]]] = {}
    for ann in anns:  # annotations are written in drawing order
        by_image.setdefault(ann["image_id"], []).append(ann["bbox"])
    overlapping = 0
    for objects in by_image.values():
        for j, (x, y, w, h) in enumerate(objects):
            covered = 0.0
            for x2, y2, w2, h2 in objects[j + 1 :]:
                covered += max(0, min(x + w, x2 + w2) - max(x, x2)) * max(
                    0, min(y + h, y2 + h2) - max(y, y2)
                )
            assert covered <= MAX_OCCLUSION * w * h
            overlapping += covered > 0
    assert overlapping > 0  # occlusion does happen
    counts = [len(v) for v in by_image.values()]
    assert max(counts) >= 6 and 2.5 <= np.mean(counts) <= 6


def test_objects_contrast_with_background(shapes):
    """Filled squares differ clearly from the pixels just outside their box (a learnable task)."""
    ds = load_split(shapes, "train")
    contrasts = []
    for index in range(len(ds)):
        image, target = ds[index]
        pixels = image.float()
        for box, label in zip(target["boxes"].long().tolist(), target["labels"].tolist()):
            x1, y1, x2, y2 = box
            if label != 1 or x1 < 2 or y1 < 2:
                continue
            inside = pixels[:, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].mean(dim=(1, 2))
            outside = pixels[:, y1 - 2 : y1, x1:x2].mean(dim=(1, 2))
            contrasts.append(float((inside - outside).abs().max()))
    assert len(contrasts) >= 3 and float(np.median(contrasts)) > 40


def test_refuses_to_overwrite_unless_asked(tmp_path):
    root = tmp_path / "ds"
    make_synthetic_coco(root, n_train=2, n_val=1, seed=0, image_size=64)
    before = _digest(root)
    with pytest.raises(DataError) as exc:
        make_synthetic_coco(root, n_train=2, n_val=1, seed=1, image_size=64)
    assert (
        "overwrite" in str(exc.value) and str(root) in str(exc.value) and "\n" not in str(exc.value)
    )
    assert _digest(root) == before
    make_synthetic_coco(root, n_train=3, n_val=1, seed=1, image_size=64, overwrite=True)
    assert len(list((root / "train" / "images").iterdir())) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_empty_existing_folder_is_used(tmp_path):
    (tmp_path / "ds").mkdir()
    make_synthetic_coco(tmp_path / "ds", n_train=1, n_val=1, image_size=64)
    assert (tmp_path / "ds" / "val" / "instances.json").is_file()


def test_never_overwrites_foreign_files(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="thesis.tex"):
        make_synthetic_coco(tmp_path / "home", n_train=1, n_val=1, image_size=64, overwrite=True)
    assert (tmp_path / "home" / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n_train": 0}, "n_train"),
        ({"n_val": -1}, "n_val"),
        ({"image_size": (16, 64)}, "image_size"),
        ({"num_classes": len(SHAPE_CATEGORIES) + 1}, "num_classes"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, field):
    with pytest.raises(DataError, match=field):
        make_synthetic_coco(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


def test_images_are_rgb_uint8(shapes):
    image, _ = load_split(shapes, "val")[0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 64, 64)
    assert float(image.float().std()) > 5  # textured, not flat
