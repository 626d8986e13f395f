"""COCO-format detection datasets: the folder contract, validation and a torch ``Dataset``.

Dataset folder contract
-----------------------
A dataset directory ``DIR`` holds one folder per split::

    DIR/train/instances.json    DIR/train/images/<file_name>
    DIR/val/instances.json      DIR/val/images/<file_name>

``file_name`` in the json is relative to the split's ``images/`` folder and may contain
subfolders. ``effscale make-data DIR`` writes a synthetic dataset in this layout.

A split may also be given where it lies, COCO as downloaded: an annotation file and the image
folder apart, ``CocoSplit(annotations="annotations/instances_train2017.json",
images="train2017")``, opened with :func:`open_split` (see :mod:`.layout`). Both forms are
checked the same way (:mod:`.validate`).

Targets
-------
Each item of :class:`CocoDetection` is ``(image, target)``:

* ``image``: ``torch.uint8`` tensor ``[3, H, W]`` (RGB, channel-first). Without a transform this is
  the original image; with :class:`~effscale.detector.data.transforms.ResizePad` or
  :class:`~effscale.detector.data.transforms.TrainTransform` it is the network-input canvas.
* ``target["boxes"]``: ``torch.float32`` ``[N, 4]``, ``(x1, y1, x2, y2)`` in pixels of ``image``
  (continuous coordinates: a box covering pixel columns 0..9 is ``x1=0, x2=10``).
* ``target["labels"]``: ``torch.int64`` ``[N]``, contiguous class labels ``0..num_classes-1``
  (see :attr:`CocoDetection.category_ids` for the mapping back to COCO category ids).
* ``target["image_id"]``: ``int``, the COCO image id.
* ``target["scale"]``: ``float``, original-image pixels per network-input pixel, so that
  ``original_boxes = boxes * scale`` after :class:`ResizePad` (1.0 without a transform).
* ``target["orig_size"]``: ``(height, width)`` ``int`` pixels of the original image.

Annotations with ``iscrowd=1`` are left out of training targets (they stay in :attr:`coco` for
evaluation), as are boxes with zero or negative width or height after clipping to the image.

Transform protocol
------------------
A transform is a callable ``transform(image, target) -> (image, target)`` taking a PIL RGB image
and the target above in original-image pixels (``scale == 1.0``) and returning a ``uint8``
``[3, H, W]`` tensor and the target in the output's pixels.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from .layout import (
    ANN_FILE_NAME,
    IMAGES_DIR_NAME,
    SPLITS,
    CocoSplit,
    DataError,
    split_paths,
)
from .validate import check_annotations, check_image_file, load_annotations, open_image

__all__ = [
    "DataError",
    "SPLITS",
    "ANN_FILE_NAME",
    "IMAGES_DIR_NAME",
    "CocoSplit",
    "split_paths",
    "CocoDetection",
    "load_split",
    "open_split",
    "pil_to_tensor",
]

Transform = Callable[[Image.Image, dict], "tuple[torch.Tensor, dict]"]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """Convert a PIL image to a ``torch.uint8`` tensor ``[3, H, W]`` (RGB, channel-first).

    Any PIL mode (``L``, ``RGBA``, ``P``, ...) is converted to RGB first; alpha is dropped.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class CocoDetection(Dataset):
    """A COCO-format detection dataset read through pycocotools.

    Args:
        images_dir: folder that ``file_name`` entries of the json are relative to.
        ann_file: COCO instances json (``images``, ``annotations`` and ``categories`` lists).
        transform: optional ``transform(pil_rgb_image, target) -> (uint8 [3, H, W] tensor, target)``;
            see the module docstring for the protocol.
        subset: if given, keep ``min(subset, number of images)`` images chosen with ``seed``
            (deterministic); ``None`` keeps all images.
        seed: seed of the subset choice.

    Items are ``(image, target)`` as described in the module docstring. Image ids are ordered by
    increasing COCO image id.

    Raises:
        DataError: the json is not a COCO instances file or a record is malformed
            (:func:`~.validate.check_annotations`), an image listed is missing on disk or not a
            regular file, or the selection holds zero images.
    """

    def __init__(
        self,
        images_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        *,
        transform: Transform | None = None,
        subset: int | None = None,
        seed: int = 0,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.ann_file = Path(ann_file)
        self.transform = transform
        if not self.images_dir.is_dir():
            raise DataError(
                f"image folder {self.images_dir} does not exist; point images_dir at the folder of the images"
            )
        data = load_annotations(self.ann_file)
        check_annotations(data, self.ann_file)
        for ann in data["annotations"]:  # optional in many real files; COCOeval needs both
            ann.setdefault("iscrowd", 0)
            if "area" not in ann and isinstance(ann.get("bbox"), list) and len(ann["bbox"]) == 4:
                ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
            bbox = ann.get("bbox")
            if isinstance(bbox, list) and len(bbox) == 4 and (bbox[2] <= 0 or bbox[3] <= 0):
                # no box can overlap a degenerate one: evaluate it as ignored, not as a miss
                ann["iscrowd"] = 1
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        #: the pycocotools ``COCO`` object of the full annotation file (crowd annotations included)
        self.coco = coco

        #: COCO category ids, sorted; label ``i`` is category ``category_ids[i]``
        self.category_ids: tuple[int, ...] = tuple(sorted(coco.cats))
        self._cat_to_label = {cat_id: label for label, cat_id in enumerate(self.category_ids)}
        #: category names in label order
        self.category_names: tuple[str, ...] = tuple(
            str(coco.cats[cat_id].get("name", cat_id)) for cat_id in self.category_ids
        )

        all_ids = sorted(coco.imgs)
        if not all_ids:
            raise DataError(
                f"annotation file {self.ann_file} lists no images; add entries to 'images'"
            )
        if subset is not None:
            if isinstance(subset, bool) or not isinstance(subset, int) or subset < 0:
                raise DataError(f"subset must be a non-negative integer or None, got {subset!r}")
            if subset == 0:
                raise DataError(
                    f"subset=0 selects zero images of {self.ann_file}; use a positive subset or None"
                )
            if subset < len(all_ids):
                order = np.random.default_rng(seed).permutation(len(all_ids))[:subset]
                all_ids = sorted(all_ids[i] for i in order)
        self._image_ids: tuple[int, ...] = tuple(all_ids)
        self._targets = {image_id: self._build_target(image_id) for image_id in self._image_ids}
        self.verify_files()

    # ------------------------------------------------------------------ mapping helpers
    @property
    def num_classes(self) -> int:
        """Number of categories ``C``; labels are ``0..C-1``."""
        return len(self.category_ids)

    @property
    def image_ids(self) -> tuple[int, ...]:
        """COCO image ids of the selected images, in item order."""
        return self._image_ids

    def label_to_category_id(self, label: int) -> int:
        """COCO category id of contiguous ``label`` (``0 <= label < num_classes``)."""
        label = int(label)
        if not 0 <= label < self.num_classes:
            raise DataError(
                f"label {label} is out of range for {self.ann_file}; expected 0..{self.num_classes - 1}"
            )
        return self.category_ids[label]

    def category_id_to_label(self, category_id: int) -> int:
        """Contiguous label of COCO ``category_id``."""
        try:
            return self._cat_to_label[int(category_id)]
        except KeyError:
            raise DataError(f"category id {category_id} is not listed in {self.ann_file}") from None

    def image_path(self, index: int) -> Path:
        """Path on disk of item ``index``."""
        return self.images_dir / self.coco.imgs[self._image_ids[index]]["file_name"]

    # ------------------------------------------------------------------ checks
    def verify_files(self) -> None:
        """Check that every selected image is a regular file on disk (``os.stat`` only: no
        decoding, and a FIFO is never opened).

        Raises:
            DataError: naming the first missing file and how many are missing, or the first
                path that is not a regular file.
        """
        missing = []
        for image_id in self._image_ids:
            path = os.path.join(self.images_dir, self.coco.imgs[image_id]["file_name"])
            if not os.path.lexists(path):
                missing.append(path)
                continue
            check_image_file(path, ann_file=self.ann_file)
        if missing:
            raise DataError(
                f"{len(missing)} of {len(self._image_ids)} images listed in {self.ann_file} are missing on disk, "
                f"first: {missing[0]}; put the images under {self.images_dir} or fix 'file_name'"
            )

    # ------------------------------------------------------------------ targets
    def _build_target(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.coco.imgs[image_id]
        width = info.get("width")
        height = info.get("height")
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, ()):
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if not all(math.isfinite(v) for v in (x, y, w, h)):
                continue
            x1, y1, x2, y2 = x, y, x + w, y + h
            if width is not None and height is not None:
                x1, x2 = min(max(x1, 0.0), float(width)), min(max(x2, 0.0), float(width))
                y1, y2 = min(max(y1, 0.0), float(height)), min(max(y2, 0.0), float(height))
            if x2 <= x1 or y2 <= y1:
                continue
            boxes.append((x1, y1, x2, y2))
            labels.append(self._cat_to_label[ann["category_id"]])
        return (
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64).reshape(-1),
        )

    # ------------------------------------------------------------------ Dataset API
    @property
    def objects_per_image(self) -> tuple[int, ...]:
        """Object count of each image (crowd and degenerate boxes excluded), in dataset order.

        Augmentation only drops objects, so ``max(objects_per_image)`` bounds every batch's rows."""
        return tuple(int(self._targets[image_id][1].shape[0]) for image_id in self._image_ids)

    def __len__(self) -> int:
        return len(self._image_ids)

    def load_image(self, index: int) -> Image.Image:
        """Decode item ``index`` as a PIL RGB image (grayscale, palette and RGBA are converted)
        with :func:`~.validate.open_image`: a regular file only, at most
        :data:`~.validate.MAX_IMAGE_PIXELS` pixels.

        Pixels are used as stored (no EXIF rotation), as COCO annotations assume; the size must
        match the json's ``width`` x ``height``.
        """
        info = self.coco.imgs[self._image_ids[index]]
        return open_image(
            self.image_path(index),
            ann_file=self.ann_file,
            size=(info.get("width"), info.get("height")),
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index = index % len(self)
        image_id = self._image_ids[index]
        image = self.load_image(index)
        boxes, labels = self._targets[image_id]
        target = {
            "boxes": torch.from_numpy(boxes.copy()),
            "labels": torch.from_numpy(labels.copy()),
            "image_id": int(image_id),
            "scale": 1.0,
            "orig_size": (int(image.size[1]), int(image.size[0])),
        }
        if self.transform is None:
            return pil_to_tensor(image), target
        return self.transform(image, target)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(images={len(self)}, classes={self.num_classes}, "
            f"ann_file='{self.ann_file}', transform={self.transform!r})"
        )


def open_split(
    files: CocoSplit,
    *,
    transform: Transform | None = None,
    subset: int | None = None,
    seed: int = 0,
) -> CocoDetection:
    """Open a split given by its files (an annotation file and an image folder, wherever they
    lie) as a :class:`CocoDetection`; the keywords are :class:`CocoDetection`'s."""
    return CocoDetection(
        files.images, files.annotations, transform=transform, subset=subset, seed=seed
    )


def load_split(
    data_dir: str | os.PathLike,
    split: str,
    *,
    transform: Transform | None = None,
    subset: int | None = None,
    seed: int = 0,
) -> CocoDetection:
    """Open split ``"train"`` or ``"val"`` of a dataset folder as a :class:`CocoDetection`.

    Equivalent to ``CocoDetection(*split_paths(data_dir, split), transform=..., subset=..., seed=...)``.
    """
    images_dir, ann_file = split_paths(data_dir, split)
    return CocoDetection(images_dir, ann_file, transform=transform, subset=subset, seed=seed)
