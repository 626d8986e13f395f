"""Where a COCO split lies on disk, in either of its two forms; torch-free.

* The folder contract, the short form: ``DIR/train/instances.json`` + ``DIR/train/images/``
  and the same under ``DIR/val/`` (``effscale make-data DIR`` writes it).
* COCO as downloaded: an annotation file and an image folder given apart, for example
  ``annotations/instances_train2017.json`` with ``train2017/`` (:class:`CocoSplit`).

Both forms end in a :class:`CocoSplit`, checked the same way (:func:`check_split`): the
annotation file is a file and the image folder a folder, or a :class:`DataError` of one line
names the path and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DataError",
    "SPLITS",
    "ANN_FILE_NAME",
    "IMAGES_DIR_NAME",
    "CocoSplit",
    "check_split",
    "locate_split",
    "split_paths",
]

#: split folder names of the dataset contract
SPLITS = ("train", "val")
#: annotation file name inside a split folder
ANN_FILE_NAME = "instances.json"
#: image folder name inside a split folder
IMAGES_DIR_NAME = "images"


class DataError(ValueError):
    """Bad dataset input (missing folder or file, malformed COCO json, empty selection, an image
    that cannot be read).

    The message is a single line that names the offending path or record and says how to fix it.
    """


@dataclass(frozen=True)
class CocoSplit:
    """One split given by its files: the COCO instances json ``annotations`` and the folder
    ``images`` that its ``file_name`` entries are relative to (paths are made ``Path``)."""

    annotations: Path
    images: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotations", Path(self.annotations))
        object.__setattr__(self, "images", Path(self.images))


def check_split(files: CocoSplit, split: str) -> CocoSplit:
    """``files`` when its annotation file is a file and its image folder a folder.

    Raises:
        DataError: naming the missing or wrong path and the fix (``split`` names the split).
    """
    hint = f"point the {split} split at a COCO instances json and its image folder"
    if not files.annotations.is_file():
        what = "is a folder" if files.annotations.is_dir() else "does not exist"
        raise DataError(f"{split} annotation file {files.annotations} {what}; {hint}")
    if not files.images.is_dir():
        what = "is not a folder" if files.images.exists() else "does not exist"
        raise DataError(f"{split} image folder {files.images} {what}; {hint}")
    return files


def split_paths(data_dir: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """Locate one split of a dataset folder (the folder contract).

    Args:
        data_dir: dataset directory ``DIR`` holding ``train/`` and ``val/``.
        split: ``"train"`` or ``"val"``.

    Returns:
        ``(images_dir, ann_file)``: ``DIR/<split>/images`` and ``DIR/<split>/instances.json``.

    Raises:
        DataError: ``split`` is unknown, or the directory, split folder, images folder or
            annotation file is missing (the message names the path and the fix).
    """
    if split not in SPLITS:
        raise DataError(f"split {split!r} is unknown; use one of {', '.join(SPLITS)}")
    root = Path(data_dir)
    hint = (
        f"create it with `effscale make-data {root}` or lay it out as "
        f"{root}/{{train,val}}/{ANN_FILE_NAME} + images/"
    )
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist; {hint}")
    if not root.is_dir():
        raise DataError(f"dataset path {root} is not a folder; {hint}")
    split_dir = root / split
    if not split_dir.is_dir() and (root / "annotations").is_dir():
        raise DataError(
            f"dataset folder {root} has no {split}/ split folder but an annotations/ folder, "
            f"as COCO is downloaded; give the {split} split as its annotation file and image "
            f"folder instead (for example {root}/annotations/instances_{split}2017.json and "
            f"{root}/{split}2017)"
        )
    if not split_dir.is_dir():
        raise DataError(
            f"dataset folder {root} has no {split}/ split folder ({split_dir} is missing); {hint}"
        )
    ann_file = split_dir / ANN_FILE_NAME
    if not ann_file.is_file():
        raise DataError(f"annotation file {ann_file} is missing; {hint}")
    images_dir = split_dir / IMAGES_DIR_NAME
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} is missing; {hint}")
    return images_dir, ann_file


def locate_split(
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    files: CocoSplit | None = None,
) -> CocoSplit:
    """The files of ``split`` (``"train"`` or ``"val"``): ``files`` when given (checked by
    :func:`check_split`), else the split's folder under ``data_dir`` (:func:`split_paths`).

    Raises:
        DataError: neither is given, or the paths are missing (naming them and the fix).
    """
    if split not in SPLITS:
        raise DataError(f"split {split!r} is unknown; use one of {', '.join(SPLITS)}")
    if files is not None:
        return check_split(files, split)
    if data_dir is None:
        raise DataError(
            f"the {split} split has no location; give a dataset folder or the {split} "
            "split's annotation file and image folder"
        )
    images_dir, ann_file = split_paths(data_dir, split)
    return CocoSplit(annotations=ann_file, images=images_dir)
