"""CocoDetection and the dataset folder contract on a hand-made COCO file with every quirk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from effscale.detector.data import CocoDetection, DataError, ResizePad, load_split, split_paths


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- mapping and targets
def test_category_mapping_is_sorted_and_contiguous(quirky):
    ds = CocoDetection(*quirky)
    assert ds.category_ids == (3, 7, 12)
    assert ds.num_classes == 3
    assert ds.category_names == ("cat", "dog", "zebra")
    assert [ds.label_to_category_id(label) for label in range(3)] == [3, 7, 12]
    assert ds.category_id_to_label(12) == 2
    with pytest.raises(DataError):
        ds.label_to_category_id(3)
    with pytest.raises(DataError):
        ds.category_id_to_label(4)


def test_items_in_image_id_order_with_exact_targets(quirky):
    ds = CocoDetection(*quirky)
    assert len(ds) == 3
    assert ds.image_ids == (10, 20, 30)

    image, target = ds[0]  # grayscale PNG
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 20, 40)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert int(image[0, 0, 0]) == 200
    # the crowd box and the zero-width box are left out; the float xywh box becomes xyxy
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["boxes"].tolist() == [[4.5, 2.25, 14.5, 7.75]]
    assert target["labels"].tolist() == [1]
    assert target["image_id"] == 10 and target["scale"] == 1.0 and target["orig_size"] == (20, 40)

    image, target = ds[1]  # RGB JPEG in sub/dir/
    assert tuple(image.shape) == (3, 48, 32)
    assert abs(int(image[0, 24, 16]) - 200) <= 3 and int(image[1, 24, 16]) < 40
    assert target["boxes"].tolist() == [[8.0, 16.0, 24.5, 24.0], [0.0, 0.0, 8.0, 8.0]]
    assert target["labels"].tolist() == [2, 0]
    assert target["orig_size"] == (48, 32)

    image, target = ds[2]  # RGBA PNG, no annotations
    assert tuple(image.shape) == (3, 16, 16)
    assert image[:, 0, 0].tolist() == [10, 20, 30]
    assert tuple(target["boxes"].shape) == (0, 4) and tuple(target["labels"].shape) == (0,)


def test_crowd_annotation_stays_in_coco_for_evaluation(quirky):
    ds = CocoDetection(*quirky)
    anns = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[10]))
    assert sorted(a["id"] for a in anns) == [1, 2, 3]
    assert [a["iscrowd"] for a in anns if a["id"] == 2] == [1]
    assert ds.ann_file == quirky[1]


def test_resize_pad_exact_boxes_and_scale(quirky):
    ds = CocoDetection(*quirky, transform=ResizePad((64, 64)))
    image, target = ds[0]  # 40 x 20 -> ratio min(64/20, 64/40) = 1.6 -> 64 x 32 content
    assert tuple(image.shape) == (3, 64, 64)
    assert bool((image[:, :32, :] == 200).all())
    assert bool((image[:, 32:, :] == 0).all())  # padding at the bottom
    torch.testing.assert_close(target["boxes"], torch.tensor([[7.2, 3.6, 23.2, 12.4]]))
    assert target["scale"] == pytest.approx(0.625)
    torch.testing.assert_close(
        target["boxes"] * target["scale"], torch.tensor([[4.5, 2.25, 14.5, 7.75]])
    )
    assert target["orig_size"] == (20, 40)


def test_resize_pad_non_square_canvas(quirky):
    ds = CocoDetection(*quirky, transform=ResizePad((32, 64)))
    image, target = ds[1]  # 32 x 48 (w x h) -> ratio min(32/48, 64/32) = 2/3 -> 21 x 32 content
    assert tuple(image.shape) == (3, 32, 64)
    assert int(image[0, 16, 10]) > 180 and bool(
        (image[:, :, 21:] == 0).all()
    )  # padding at the right
    expected = torch.tensor([[8.0, 16.0, 24.5, 24.0], [0.0, 0.0, 8.0, 8.0]]) * (2.0 / 3.0)
    torch.testing.assert_close(target["boxes"], expected)
    assert target["scale"] == pytest.approx(1.5)


def test_subset_is_deterministic(quirky):
    first = CocoDetection(*quirky, subset=2, seed=4)
    again = CocoDetection(*quirky, subset=2, seed=4)
    assert len(first) == 2 and first.image_ids == again.image_ids
    assert list(first.image_ids) == sorted(first.image_ids)
    choices = {CocoDetection(*quirky, subset=2, seed=s).image_ids for s in range(8)}
    assert len(choices) > 1
    assert CocoDetection(*quirky, subset=10).image_ids == (10, 20, 30)


# ---------------------------------------------------------------- folder contract
def test_split_paths_and_load_split(tmp_path, quirky):
    images_dir, ann_file = quirky
    root = tmp_path / "ds"
    (root / "train").mkdir(parents=True)
    os.symlink(images_dir, root / "train" / "images")
    (root / "train" / "instances.json").write_text(ann_file.read_text())
    assert split_paths(root, "train") == (
        root / "train" / "images",
        root / "train" / "instances.json",
    )
    assert len(load_split(root, "train", subset=1)) == 1
    with pytest.raises(DataError) as exc:
        split_paths(root, "val")
    assert "val" in _one_line(exc) and "effscale make-data" in str(exc.value)
    with pytest.raises(DataError, match="unknown"):
        split_paths(root, "test")


def test_missing_dataset_folder_names_path_and_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as exc:
        split_paths(missing, "train")
    message = _one_line(exc)
    assert str(missing) in message and f"effscale make-data {missing}" in message
    assert isinstance(exc.value, ValueError)


def test_missing_ann_file_in_split(tmp_path):
    (tmp_path / "ds" / "train" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="instances.json is missing"):
        split_paths(tmp_path / "ds", "train")


# ---------------------------------------------------------------- bad input
def test_not_json_names_file(quirky, tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{ this is not json")
    with pytest.raises(DataError) as exc:
        CocoDetection(quirky[0], bad)
    assert "broken.json" in _one_line(exc) and "not valid JSON" in str(exc.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        ([1, 2, 3], "top level is list"),
        ({"images": [], "annotations": []}, "missing key(s) categories"),
        ({"images": {}, "annotations": [], "categories": []}, "'images' must be a list"),
    ],
)
def test_not_coco_names_file_and_key(quirky, tmp_path, content, expected):
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps(content))
    with pytest.raises(DataError) as exc:
        CocoDetection(quirky[0], bad)
    message = _one_line(exc)
    assert "other.json" in message and expected in message


def test_annotation_with_unknown_category(quirky):
    data = json.loads(quirky[1].read_text())
    data["annotations"][0]["category_id"] = 99
    quirky[1].write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotations\[0\] \(id 1\): category_id 99 is not listed"):
        CocoDetection(*quirky)


def test_missing_image_is_reported_at_construction(quirky):
    (quirky[0] / "sub" / "dir" / "rgb.jpg").unlink()
    with pytest.raises(DataError) as exc:
        CocoDetection(*quirky)
    message = _one_line(exc)
    assert "rgb.jpg" in message and "1 of 3" in message


def test_missing_image_is_reported_at_load_time(quirky):
    ds = CocoDetection(*quirky)
    (quirky[0] / "gray.png").unlink()
    with pytest.raises(DataError) as exc:
        ds[0]
    assert "gray.png" in _one_line(exc)
    with pytest.raises(DataError, match="gray.png"):
        ds.verify_files()


def test_size_mismatch_between_json_and_file(quirky):
    data = json.loads(quirky[1].read_text())
    data["images"][0]["width"] = 41
    quirky[1].write_text(json.dumps(data))
    ds = CocoDetection(*quirky)
    with pytest.raises(DataError, match="gray.png is 40x20"):
        ds[0]


def test_zero_images(quirky):
    with pytest.raises(DataError, match="subset=0"):
        CocoDetection(*quirky, subset=0)
    data = json.loads(quirky[1].read_text())
    data["images"], data["annotations"] = [], []
    quirky[1].write_text(json.dumps(data))
    with pytest.raises(DataError, match="lists no images"):
        CocoDetection(*quirky)


def test_missing_images_dir(quirky, tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        CocoDetection(tmp_path / "no_images", quirky[1])
