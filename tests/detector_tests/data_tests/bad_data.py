"""Bad datasets, made from a good generated one: each case of issue 18's "bad data gets in"
corrupts one thing of a ``DIR/{train,val}/instances.json + images/`` folder. Shared by the
validation tests and the ``search`` / ``train`` refusal tests."""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path


def bomb_png(path: Path, width: int, height: int) -> None:
    """Write a valid PNG header declaring ``width`` x ``height`` 1-bit pixels, with one tiny
    IDAT: a few hundred bytes on disk that would decode to ``width * height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _edit(root: Path, split: str, change: Callable[[dict], None]) -> Path:
    ann_file = root / split / "instances.json"
    data = json.loads(ann_file.read_text())
    change(data)
    ann_file.write_text(json.dumps(data))
    return ann_file


def _first_image(root: Path, split: str = "train") -> Path:
    data = json.loads((root / split / "instances.json").read_text())
    first = min(data["images"], key=lambda img: img["id"])
    return root / split / "images" / first["file_name"]


def null_in_bbox(root: Path) -> tuple[str, ...]:
    def change(data: dict) -> None:
        data["annotations"][0]["bbox"][0] = None

    _edit(root, "train", change)
    return ("train/instances.json", "annotations[0]", "bbox [null,", "write bbox = [x, y,")


def list_as_category_id(root: Path) -> tuple[str, ...]:
    def change(data: dict) -> None:
        data["annotations"][1]["category_id"] = [1]

    _edit(root, "train", change)
    return ("train/instances.json", "annotations[1]", "category_id [1] is not an integer")


def list_as_image_id(root: Path) -> tuple[str, ...]:
    def change(data: dict) -> None:
        data["annotations"][2]["image_id"] = [1, 2]

    _edit(root, "val", change)
    return ("val/instances.json", "annotations[2]", "image_id [1, 2] is not an integer")


def number_as_file_name(root: Path) -> tuple[str, ...]:
    def change(data: dict) -> None:
        data["images"][0]["file_name"] = 5

    _edit(root, "train", change)
    return ("train/instances.json", "images[0]", "file_name 5 is not a file name", "relative")


def empty_train_split(root: Path) -> tuple[str, ...]:
    def change(data: dict) -> None:
        data["images"], data["annotations"] = [], []

    _edit(root, "train", change)
    return ("train/instances.json", "lists no images", "must not be empty")


def undecodable_image(root: Path) -> tuple[str, ...]:
    image = _first_image(root)
    image.write_bytes(b"this is not a PNG file" * 10)
    return (image.name, "cannot be decoded", "replace the file")


def decompression_bomb(root: Path) -> tuple[str, ...]:
    image = _first_image(root)
    bomb_png(image, 40_000, 40_000)  # 1.6 G pixels in 200 bytes
    return (image.name, "decompression bomb", "shrink it or remove it")


def val_without_annotations(root: Path) -> tuple[str, ...]:
    def change(data: dict) -> None:
        data["annotations"] = []

    _edit(root, "val", change)
    return ("val/instances.json", "no annotations to score against", "ground-truth boxes")


def fifo_image(root: Path) -> tuple[str, ...]:
    image = _first_image(root)
    image.unlink()
    os.mkfifo(image)
    return (image.name, "is a FIFO, not a regular file", "fix 'file_name'")


#: issue 18 (4): every case but the FIFO, which blocks the old code and is tested with a timeout
CASES: dict[str, Callable[[Path], tuple[str, ...]]] = {
    "bbox with null": null_in_bbox,
    "list as category_id": list_as_category_id,
    "list as image_id": list_as_image_id,
    "number as file_name": number_as_file_name,
    "empty train split": empty_train_split,
    "undecodable image": undecodable_image,
    "decompression bomb": decompression_bomb,
    "val without annotations": val_without_annotations,
}
