"""The checks a COCO split passes before anything trains on it; one home for what a split must
hold, used by ``effscale train``, ``effscale evaluate``, ``effscale search`` (before its storage
is touched) and, record by record, by every :class:`~effscale.detector.data.CocoDetection`.
Torch-free.

What is checked, and how fully:

* **The annotation file, every record** (:func:`check_annotations`): the top level holds the
  lists ``images``, ``annotations`` and ``categories``; each category has a unique integer id;
  each image a unique integer id, a ``file_name`` that is a non-empty relative path string and,
  when given, integer ``width`` / ``height`` >= 1; each annotation a unique integer id, an
  integer ``image_id`` and ``category_id`` that are listed, a ``bbox`` of four finite numbers
  ``[x, y, width, height]`` with width and height >= 0 (0 is kept and ignored in evaluation),
  ``iscrowd`` 0 or 1 and a finite ``area`` >= 0 when given.
* **The split as a whole** (:func:`validate_split`): at least one image; a training split needs
  a box to learn from (not crowd, width and height > 0); a validation split needs at least one
  such annotation (without one every trial scores AP 0). Both splits list the same category ids
  (:func:`validate_data`), since labels are numbered from them.
* **Every image file listed** is ``os.stat``-ed, never opened first: it must exist, be a regular
  file (a FIFO, device or folder is refused: opening a FIFO blocks for ever) and not be empty.
* **Decoding is sampled**: up to ``decode_sample`` images per split (:data:`DECODE_SAMPLE`),
  evenly spread over the images in id order, are fully decoded with Pillow (all of them when the
  split holds fewer, as the quickstart's generated 200 + 50 do). Each must be at most
  ``max_pixels`` pixels (:data:`MAX_IMAGE_PIXELS`; a larger one is refused as a possible
  decompression bomb before its pixels are allocated) and match the json's width and height.
  The images outside the sample are decoded at training time by :func:`open_image`, with the
  same checks: a bad one fails its run with a one-line :class:`DataError`.

Every error is one line naming the file, the record (``annotations[12] (id 907)``) and the fix.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .layout import CocoSplit, DataError

__all__ = [
    "DECODE_SAMPLE",
    "MAX_IMAGE_PIXELS",
    "SplitCheck",
    "load_annotations",
    "check_annotations",
    "check_image_file",
    "open_image",
    "usable_box",
    "validate_split",
    "validate_data",
]

#: images per split that :func:`validate_split` decodes fully (evenly spread over the split)
DECODE_SAMPLE = 256
#: the largest image accepted, in pixels (width x height): Pillow's own default warning limit
#: (``PIL.Image.MAX_IMAGE_PIXELS``, about 89.5 MP, e.g. 9459 x 9459)
MAX_IMAGE_PIXELS = 89_478_485

_REQUIRED_KEYS = ("images", "annotations", "categories")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict, str)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_annotations(ann_file: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO instances json: an object holding the lists ``images``, ``annotations`` and
    ``categories`` (records are not checked here: see :func:`check_annotations`).

    Raises:
        DataError: the file is missing, not a regular file, not JSON or not of that shape.
    """
    ann_file = Path(ann_file)
    try:
        mode = os.stat(ann_file).st_mode
    except FileNotFoundError:
        raise DataError(
            f"annotation file {ann_file} does not exist; point to a COCO instances.json"
        ) from None
    if not stat.S_ISREG(mode):
        raise DataError(
            f"annotation file {ann_file} is not a regular file; point to a COCO instances.json"
        )
    try:
        with open(ann_file, "rb") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else _one_line(exc)
        raise DataError(
            f"annotation file {ann_file} is not valid JSON ({reason}); "
            "it must be a COCO instances file"
        ) from None
    if not isinstance(data, dict):
        raise DataError(
            f"annotation file {ann_file} is not a COCO instances file (top level is "
            f"{type(data).__name__}, expected an object with keys {', '.join(_REQUIRED_KEYS)})"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise DataError(
            f"annotation file {ann_file} is not a COCO instances file: missing key(s) "
            f"{', '.join(missing)}; it needs {', '.join(_REQUIRED_KEYS)}"
        )
    for key in _REQUIRED_KEYS:
        if not isinstance(data[key], list):
            raise DataError(
                f"annotation file {ann_file}: '{key}' must be a list, got {type(data[key]).__name__}"
            )
    return data


def _record(ann_file: Path, key: str, index: int, record: Any) -> str:
    """``file: key[index] (id N)``, the record's name in an error."""
    ident = record.get("id") if isinstance(record, dict) else None
    suffix = f" (id {_show(ident)})" if ident is not None else ""
    return f"{ann_file}: {key}[{index}]{suffix}"


def _bad(ann_file: Path, key: str, index: int, record: Any, problem: str, fix: str) -> DataError:
    return DataError(f"{_record(ann_file, key, index, record)}: {problem}; {fix}")


def check_annotations(data: dict[str, Any], ann_file: str | os.PathLike) -> None:
    """Check every record of a loaded COCO instances file (see the module docstring for the
    rules); ``ann_file`` names the file in the errors.

    Raises:
        DataError: naming the file, the first bad record and the fix.
    """
    ann_file = Path(ann_file)
    fix = "fix the record or remove it"
    cat_ids: set[int] = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise _bad(
                ann_file, "categories", i, cat, "needs an integer 'id'", "give it an integer id"
            )
        if cat["id"] in cat_ids:
            raise _bad(
                ann_file,
                "categories",
                i,
                cat,
                "category ids are not unique",
                "give each category its own id",
            )
        cat_ids.add(cat["id"])
    if not cat_ids:
        raise DataError(
            f"annotation file {ann_file} has no categories; add at least one to 'categories'"
        )
    image_ids: set[int] = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise _bad(ann_file, "images", i, img, "needs 'id' and 'file_name'", fix)
        if not _is_int(img["id"]):
            raise _bad(ann_file, "images", i, img, f"id {_show(img['id'])} is not an integer", fix)
        if img["id"] in image_ids:
            raise _bad(
                ann_file,
                "images",
                i,
                img,
                f"image id {img['id']} appears twice in 'images'",
                "give each image its own id",
            )
        image_ids.add(img["id"])
        name = img["file_name"]
        if not isinstance(name, str) or not name.strip():
            raise _bad(
                ann_file,
                "images",
                i,
                img,
                f"file_name {_show(name)} is not a file name",
                "write the image's path relative to the image folder as a string",
            )
        if os.path.isabs(name):
            raise _bad(
                ann_file,
                "images",
                i,
                img,
                f"file_name {_show(name)} is an absolute path",
                "write it relative to the image folder",
            )
        for side in ("width", "height"):
            if side in img and not (_is_int(img[side]) and img[side] >= 1):
                raise _bad(
                    ann_file,
                    "images",
                    i,
                    img,
                    f"{side} {_show(img[side])} is not a positive integer (pixels)",
                    f"give the image's {side} in pixels or drop the key",
                )
    ann_ids: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise _bad(ann_file, "annotations", i, ann, "is not an object", fix)
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in ann:
                raise _bad(ann_file, "annotations", i, ann, f"is missing '{key}'", fix)
        for key in ("id", "image_id", "category_id"):
            if not _is_int(ann[key]):
                raise _bad(
                    ann_file,
                    "annotations",
                    i,
                    ann,
                    f"{key} {_show(ann[key])} is not an integer",
                    f"give {key} as an integer id",
                )
        if ann["id"] in ann_ids:
            raise _bad(
                ann_file,
                "annotations",
                i,
                ann,
                f"annotation id {ann['id']} appears twice",
                "give each annotation its own id",
            )
        ann_ids.add(ann["id"])
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise _bad(
                ann_file,
                "annotations",
                i,
                ann,
                f"bbox {_show(bbox)} is not four finite numbers",
                "write bbox = [x, y, width, height] in pixels",
            )
        if bbox[2] < 0 or bbox[3] < 0:
            raise _bad(
                ann_file,
                "annotations",
                i,
                ann,
                f"bbox {_show(bbox)} has a negative width or height",
                "write bbox = [x, y, width, height] with width, height >= 0",
            )
        if ann["category_id"] not in cat_ids:
            raise _bad(
                ann_file,
                "annotations",
                i,
                ann,
                f"category_id {ann['category_id']} is not listed in 'categories'",
                "add the category or fix the record",
            )
        if ann["image_id"] not in image_ids:
            raise _bad(
                ann_file,
                "annotations",
                i,
                ann,
                f"image_id {ann['image_id']} is not listed in 'images'",
                "add the image or fix the record",
            )
        if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
            raise _bad(
                ann_file, "annotations", i, ann, f"iscrowd {_show(ann['iscrowd'])}", "use 0 or 1"
            )
        if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
            raise _bad(
                ann_file,
                "annotations",
                i,
                ann,
                f"area {_show(ann['area'])} is not a finite number >= 0",
                "give the area in square pixels or drop the key",
            )


def usable_box(ann: dict[str, Any]) -> bool:
    """Whether a checked annotation is a box to learn from: not crowd, width and height > 0."""
    bbox = ann["bbox"]
    return not ann.get("iscrowd", 0) and bbox[2] > 0 and bbox[3] > 0


def check_image_file(path: str | os.PathLike, *, ann_file: str | os.PathLike | None = None) -> None:
    """Check that ``path`` is a non-empty regular file, with ``os.stat`` only (it is never
    opened: opening a FIFO would block).

    Raises:
        DataError: the file is missing, not a regular file (naming what it is) or empty.
    """
    where = f" listed in {ann_file}" if ann_file is not None else ""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DataError(
            f"image {path}{where} is missing on disk; restore it or fix 'file_name'"
        ) from None
    except OSError as exc:
        raise DataError(f"image {path}{where} cannot be read ({_one_line(exc)})") from None
    mode = info.st_mode
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a folder"
            if stat.S_ISDIR(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a file"
        )
        raise DataError(
            f"image {path}{where} is {kind}, not a regular file; put the image file there "
            "or fix 'file_name'"
        )
    if info.st_size == 0:
        raise DataError(f"image {path}{where} is empty (0 bytes); replace the file")


def open_image(
    path: str | os.PathLike,
    *,
    ann_file: str | os.PathLike | None = None,
    size: tuple[int | None, int | None] = (None, None),
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Decode ``path`` as a PIL RGB image (grayscale, palette and RGBA are converted), after
    :func:`check_image_file`. Pixels are used as stored (no EXIF rotation).

    Args:
        path: the image file.
        ann_file: the annotation file listing it, named in errors.
        size: the ``(width, height)`` in pixels the annotations give (``None``: not given).
        max_pixels: the most pixels (width x height) accepted; a larger image is refused
            before its pixels are decoded.

    Raises:
        DataError: the file is not a regular file, cannot be decoded, is over ``max_pixels``
            (a possible decompression bomb) or differs from ``size``.
    """
    check_image_file(path, ann_file=ann_file)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as raw:
                width, height = raw.size
                if width * height > max_pixels:
                    raise DataError(
                        f"image {path} is {width}x{height} pixels, over the limit of "
                        f"{max_pixels} (a decompression bomb?); shrink it or remove it from "
                        "'images'"
                    )
                raw.load()
                image = raw.convert("RGB") if raw.mode != "RGB" else raw.copy()
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{found.group(1)} pixels" if found else "more pixels"
        raise DataError(
            f"image {path} has {pixels}, over the limit of {max_pixels} (a decompression "
            "bomb?); shrink it or remove it from 'images'"
        ) from None
    except FileNotFoundError:
        raise DataError(f"image {path} is missing on disk; restore it or fix 'file_name'") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, ...
        raise DataError(
            f"image {path} cannot be decoded ({type(exc).__name__}: {_one_line(exc)}); "
            "replace the file"
        ) from None
    if None not in size and image.size != size:
        expected_w, expected_h = size
        listed = ann_file if ann_file is not None else "the annotations"
        raise DataError(
            f"image {path} is {image.size[0]}x{image.size[1]} (WxH) but {listed} says "
            f"{expected_w}x{expected_h}; fix 'width'/'height' or the file"
        )
    return image


@dataclass(frozen=True)
class SplitCheck:
    """What :func:`validate_split` checked: the split's files, its ``images`` (all stat-ed),
    ``annotations`` (all checked), ``boxes`` to learn from, category ids and how many images
    were fully ``decoded``."""

    split: str
    files: CocoSplit
    images: int
    annotations: int
    boxes: int
    category_ids: tuple[int, ...]
    decoded: int

    @property
    def num_classes(self) -> int:
        """Number of categories listed."""
        return len(self.category_ids)


def _decode_sample(images: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Up to ``count`` of ``images`` (sorted by id), evenly spread, deterministic."""
    ordered = sorted(images, key=lambda img: img["id"])
    if count >= len(ordered):
        return ordered
    if count <= 0:
        return []
    return [ordered[i * len(ordered) // count] for i in range(count)]


def validate_split(
    files: CocoSplit,
    split: str,
    *,
    decode_sample: int = DECODE_SAMPLE,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> SplitCheck:
    """Check one split before training or evaluating on it (see the module docstring): every
    annotation record, every image file's type, and ``decode_sample`` images decoded.

    Args:
        files: the split's annotation file and image folder.
        split: ``"train"`` (needs a box to learn from) or ``"val"`` (needs an annotation).
        decode_sample: images decoded fully (evenly spread); 0 decodes none.
        max_pixels: the largest image accepted, in pixels.

    Raises:
        DataError: the first problem, naming the file, the record and the fix.
    """
    if not files.images.is_dir():
        raise DataError(
            f"{split} image folder {files.images} does not exist; point it at the folder of "
            "the images"
        )
    data = load_annotations(files.annotations)
    check_annotations(data, files.annotations)
    ann_file = files.annotations
    images = data["images"]
    if not images:
        raise DataError(
            f"annotation file {ann_file} lists no images; add entries to 'images' (the {split} "
            "split must not be empty)"
        )
    annotations = data["annotations"]
    boxes = sum(1 for ann in annotations if usable_box(ann))
    if split == "train" and boxes == 0:
        raise DataError(
            f"the train split {ann_file} has no box to learn from ({len(annotations)} "
            "annotations, none with iscrowd 0 and a positive width and height); annotate "
            "the training images"
        )
    if split != "train" and boxes == 0:
        raise DataError(
            f"the {split} split {ann_file} has no annotations to score against "
            f"({len(annotations)} annotations, none with iscrowd 0 and a positive size), so "
            f"every AP would be 0; use a {split} split with ground-truth boxes"
        )
    missing: list[str] = []
    for img in images:
        path = os.path.join(files.images, img["file_name"])
        try:
            check_image_file(path, ann_file=ann_file)
        except DataError:
            if os.path.lexists(path):
                raise
            missing.append(path)
    if missing:
        raise DataError(
            f"{len(missing)} of {len(images)} images listed in {ann_file} are missing on disk, "
            f"first: {missing[0]}; put the images under {files.images} or fix 'file_name'"
        )
    sample = _decode_sample(images, decode_sample)
    for img in sample:
        image = open_image(
            os.path.join(files.images, img["file_name"]),
            ann_file=ann_file,
            size=(img.get("width"), img.get("height")),
            max_pixels=max_pixels,
        )
        image.close()
    return SplitCheck(
        split=split,
        files=files,
        images=len(images),
        annotations=len(annotations),
        boxes=boxes,
        category_ids=tuple(sorted(cat["id"] for cat in data["categories"])),
        decoded=len(sample),
    )


def validate_data(
    train: CocoSplit,
    val: CocoSplit,
    *,
    decode_sample: int = DECODE_SAMPLE,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[SplitCheck, SplitCheck]:
    """Check both splits (:func:`validate_split`) and that they list the same category ids.

    Raises:
        DataError: the first problem, naming the file, the record and the fix.
    """
    checks = tuple(
        validate_split(files, split, decode_sample=decode_sample, max_pixels=max_pixels)
        for split, files in (("train", train), ("val", val))
    )
    train_check, val_check = checks
    if train_check.category_ids != val_check.category_ids:
        only_train = sorted(set(train_check.category_ids) - set(val_check.category_ids))
        only_val = sorted(set(val_check.category_ids) - set(train_check.category_ids))
        raise DataError(
            f"{val.annotations} lists other categories than {train.annotations} (only in "
            f"train: {only_train or 'none'}, only in val: {only_val or 'none'}); both splits "
            "must list the same categories, as labels are numbered from them"
        )
    return train_check, val_check
