"""A synthetic COCO-format shapes dataset: small, fast to make, learnable, byte-reproducible.

Each image is a textured background (color gradient, low-frequency blotches, optional stripes and
pixel noise) with low-contrast clutter (thin lines, scribbles, dots) that belongs to no class, and
0-8 filled shapes of random color chosen to contrast with the background under them. Objects are
``8`` pixels to half the shorter image side on their long side. Later objects may overlap earlier
ones; a placement is rejected when it would hide more than 60% of an earlier object's box (sum of
box overlaps, a conservative bound). Annotations are the full, axis-aligned tight box of each shape.

Category ids are deliberately non-contiguous (1, 2, 3, 5, 7, 9, 11, 13) to exercise the mapping
to contiguous labels. Every image is drawn from its own ``numpy`` generator seeded with
``(seed, split, index)``, so the same seed gives byte-identical files and the first ``k`` images of
a split do not depend on how many images are made.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .layout import ANN_FILE_NAME, IMAGES_DIR_NAME, SPLITS, DataError

__all__ = [
    "SHAPE_CATEGORIES",
    "MIN_OBJECT_SIZE",
    "MAX_OCCLUSION",
    "SplitSummary",
    "SyntheticSummary",
    "ObjectSizes",
    "make_synthetic_coco",
]

#: ``(name, COCO category id)`` of every shape class, in label order
SHAPE_CATEGORIES: tuple[tuple[str, int], ...] = (
    ("circle", 1),
    ("square", 2),
    ("triangle", 3),
    ("cross", 5),
    ("ring", 7),
    ("star", 9),
    ("diamond", 11),
    ("hexagon", 13),
)
#: smallest object side in pixels
MIN_OBJECT_SIZE = 8
#: largest fraction of an object's box that later objects may cover
MAX_OCCLUSION = 0.6
_MAX_OBJECTS = 8
_EMPTY_IMAGE_PROB = 0.03
_MIN_CONTRAST = 70.0  # luma difference, 0..255
_PLACEMENT_TRIES = 30
_PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class SplitSummary:
    """What :func:`make_synthetic_coco` wrote for one split (paths are final, not temporary)."""

    name: str
    images_dir: Path
    ann_file: Path
    num_images: int
    num_objects: int


@dataclass(frozen=True)
class SyntheticSummary:
    """Result of :func:`make_synthetic_coco`.

    Attributes:
        root: the dataset folder.
        splits: ``train`` then ``val``.
        image_size: ``(height, width)`` of every image, in pixels.
        num_classes: number of shape classes used.
        seed: the seed given.
    """

    root: Path
    splits: tuple[SplitSummary, ...]
    image_size: tuple[int, int]
    num_classes: int
    seed: int

    def split(self, name: str) -> SplitSummary:
        """The summary of split ``name`` (``"train"`` or ``"val"``)."""
        for item in self.splits:
            if item.name == name:
                return item
        raise DataError(
            f"synthetic dataset has no split {name!r}; use one of {', '.join(s.name for s in self.splits)}"
        )

    def describe(self) -> str:
        """One line: counts, classes, image size and folder."""
        counts = " + ".join(f"{s.num_images} {s.name}" for s in self.splits)
        objects = " + ".join(str(s.num_objects) for s in self.splits)
        return (
            f"wrote {counts} images ({objects} objects, {self.num_classes} classes, "
            f"{self.image_size[0]}x{self.image_size[1]} HxW, seed {self.seed}) to {self.root}"
        )


# ---------------------------------------------------------------------------- drawing helpers
def _luma(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``uint8`` ``[H, W, 3]`` textured background (computed channel-first for speed)."""
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ramp = np.float32(math.cos(angle)) * xs + np.float32(math.sin(angle)) * ys
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    color_a = rng.uniform(20.0, 235.0, size=3).astype(np.float32)
    color_b = np.clip(color_a + rng.uniform(-90.0, 90.0, size=3), 0.0, 255.0).astype(np.float32)

    # luminance texture shared by the channels: stripes and pixel noise
    texture = rng.standard_normal((height, width), dtype=np.float32) * np.float32(
        rng.uniform(3.0, 14.0)
    )
    if rng.random() < 0.5:
        theta = rng.uniform(0.0, math.pi)
        period = rng.uniform(6.0, 40.0)
        phase = (
            np.float32(math.cos(theta)) * np.arange(width, dtype=np.float32)[None, :]
            + np.float32(math.sin(theta)) * np.arange(height, dtype=np.float32)[:, None]
        )
        texture += np.sin(phase * np.float32(2.0 * math.pi / period)) * np.float32(
            rng.uniform(8.0, 28.0)
        )

    # low-frequency colored blotches
    grid = rng.uniform(
        0.0, 255.0, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3)
    ).astype(np.uint8)
    blotch = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR))
    blotch_gain = np.float32(rng.uniform(10.0, 35.0) / 127.5)

    image = np.empty((3, height, width), dtype=np.float32)
    for c in range(3):
        channel = image[c]
        np.multiply(ramp, color_b[c] - color_a[c], out=channel)
        channel += color_a[c] - np.float32(127.5) * blotch_gain
        channel += blotch[:, :, c] * blotch_gain
        channel += texture
    np.clip(image, 0.0, 255.0, out=image)
    return np.ascontiguousarray(image.astype(np.uint8).transpose(1, 2, 0))


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    red, green, blue = (int(v) for v in values[:3])
    return red, green, blue


def _dim_color(rng: np.random.Generator, near: np.ndarray, spread: float) -> tuple[int, int, int]:
    color = np.clip(near + rng.uniform(-spread, spread, size=3), 0, 255)
    return _rgb(color)


def _draw_clutter(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    height: int,
    width: int,
    mean: np.ndarray,
    count: int,
) -> None:
    """Non-class distractors: thin lines, random-walk scribbles and dots of modest contrast."""
    for _ in range(count):
        kind = rng.integers(0, 3)
        color = _dim_color(rng, mean, 60.0)
        if kind == 0:
            x1, x2 = rng.uniform(0, width, size=2)
            y1, y2 = rng.uniform(0, height, size=2)
            draw.line(
                [(float(x1), float(y1)), (float(x2), float(y2))],
                fill=color,
                width=int(rng.integers(1, 3)),
            )
        elif kind == 1:
            steps = int(rng.integers(4, 12))
            start = rng.uniform((0, 0), (width, height))
            walk = start + np.cumsum(
                rng.normal(0.0, 0.05 * min(height, width), size=(steps, 2)), axis=0
            )
            draw.line([(float(x), float(y)) for x, y in walk], fill=color, width=1)
        else:
            for _ in range(int(rng.integers(3, 10))):
                cx, cy = rng.uniform(0, width), rng.uniform(0, height)
                r = float(rng.uniform(0.5, 2.0))
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)


def _unit_polygon(name: str) -> np.ndarray:
    """Vertices of a polygonal shape, normalized so the tight box is ``[0, 1] x [0, 1]``."""
    if name == "triangle":
        pts = np.array([(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)])
    elif name == "diamond":
        pts = np.array([(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)])
    elif name == "hexagon":
        angles = np.deg2rad(np.arange(6) * 60.0)
        pts = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif name == "star":
        angles = np.deg2rad(-90.0 + np.arange(10) * 36.0)
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1)
    else:  # pragma: no cover - internal table
        raise KeyError(name)
    pts = pts - pts.min(axis=0)
    return pts / pts.max(axis=0)


_POLYGONS = {name: _unit_polygon(name) for name in ("triangle", "diamond", "hexagon", "star")}


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    name: str,
    box: tuple[int, int, int, int],
    color: tuple[int, int, int],
) -> None:
    """Draw shape ``name`` filling the pixel box ``(x, y, w, h)`` (columns ``x .. x + w - 1``)."""
    x, y, w, h = box
    x2, y2 = x + w - 1, y + h - 1
    if name == "circle":
        draw.ellipse([x, y, x2, y2], fill=color)
    elif name == "square":
        draw.rectangle([x, y, x2, y2], fill=color)
    elif name == "ring":
        draw.ellipse([x, y, x2, y2], outline=color, width=max(2, round(min(w, h) * 0.18)))
    elif name == "cross":
        tw, th = max(2, round(w * 0.3)), max(2, round(h * 0.3))
        cx, cy = x + (w - tw) // 2, y + (h - th) // 2
        draw.rectangle([cx, y, cx + tw - 1, y2], fill=color)
        draw.rectangle([x, cy, x2, cy + th - 1], fill=color)
    else:
        pts = _POLYGONS[name] * np.array([w - 1, h - 1]) + np.array([x, y])
        draw.polygon([(float(px), float(py)) for px, py in pts], fill=color)


def _contrasting_color(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    target = _luma(under)
    for _ in range(8):
        color = rng.integers(0, 256, size=3)
        if abs(_luma(color) - target) >= _MIN_CONTRAST:
            return _rgb(color)
    low, high = (0, 70) if target > 127.5 else (185, 256)
    return _rgb(rng.integers(low, high, size=3))


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h)


@dataclass(frozen=True)
class ObjectSizes:
    """How many objects an image holds and how large they are: the long side of an object is
    drawn log-uniformly between ``min_size`` and ``max_size`` pixels (``None``: half the shorter
    image side), and an image holds 1 to ``max_count`` objects (3% hold none)."""

    min_size: int = MIN_OBJECT_SIZE
    max_size: int | None = None
    max_count: int = _MAX_OBJECTS

    def __post_init__(self) -> None:
        for name in ("min_size", "max_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_size is not None and (
            isinstance(self.max_size, bool)
            or not isinstance(self.max_size, int)
            or self.max_size < self.min_size
        ):
            raise DataError(
                f"max_size must be an integer >= min_size ({self.min_size}), got {self.max_size!r}"
            )


def _render(
    seed: int,
    split_index: int,
    index: int,
    size: tuple[int, int],
    num_classes: int,
    objects_spec: ObjectSizes = ObjectSizes(),
) -> tuple[Image.Image, list[tuple[int, tuple[int, int, int, int]]]]:
    """Draw one image; returns it and its ``(label, (x, y, w, h))`` objects."""
    rng = np.random.default_rng([seed, split_index, index])
    height, width = size
    pixels = _background(rng, height, width)
    mean = pixels[::4, ::4].reshape(-1, 3).mean(axis=0)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    _draw_clutter(draw, rng, height, width, mean, int(rng.integers(3, 13)))

    count = (
        0 if rng.random() < _EMPTY_IMAGE_PROB else int(rng.integers(1, objects_spec.max_count + 1))
    )
    low = min(objects_spec.min_size, min(height, width))
    limit = objects_spec.max_size if objects_spec.max_size is not None else min(height, width) // 2
    max_side = max(low, min(limit, min(height, width)))
    objects: list[tuple[int, tuple[int, int, int, int]]] = []
    covered: list[int] = []
    for _ in range(count):
        label = int(rng.integers(0, num_classes))
        name = SHAPE_CATEGORIES[label][0]
        for _ in range(_PLACEMENT_TRIES):
            long_side = int(round(math.exp(rng.uniform(math.log(low), math.log(max_side + 0.5)))))
            long_side = min(max(long_side, low), max_side)
            short_side = (
                long_side
                if name == "square"
                else max(low, int(round(long_side * rng.uniform(0.8, 1.0))))
            )
            w, h = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
            box = (int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
            overlaps = [_overlap(box, prev) for _, prev in objects]
            if all(
                covered[j] + overlaps[j] <= MAX_OCCLUSION * prev[2] * prev[3]
                for j, (_, prev) in enumerate(objects)
            ):
                break
        else:
            continue  # no legal place found: skip this object
        for j, extra in enumerate(overlaps):
            covered[j] += extra
        x, y = box[0], box[1]
        under = pixels[y : y + h, x : x + w].reshape(-1, 3).mean(axis=0)
        _draw_shape(draw, name, box, _contrasting_color(rng, under))
        objects.append((label, box))
        covered.append(0)

    if rng.random() < 0.3:  # a thin line over everything, so objects are not always pristine
        color = _dim_color(rng, mean, 60.0)
        xs, ys = rng.uniform(0, width, size=2), rng.uniform(0, height, size=2)
        draw.line([(float(xs[0]), float(ys[0])), (float(xs[1]), float(ys[1]))], fill=color, width=1)
    return image, objects


# ---------------------------------------------------------------------------- writing
def _check_count(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{field} must be a positive integer number of images, got {value!r}")
    return value


def _check_image_size(value: object) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and 32 <= v <= 4096 for v in value
        )
    ):
        raise DataError(
            f"image_size must be (height, width) with each side 32..4096 pixels, got {value!r}"
        )
    return int(value[0]), int(value[1])


def _write_split(
    root: Path,
    name: str,
    split_index: int,
    count: int,
    size: tuple[int, int],
    num_classes: int,
    seed: int,
    objects_spec: ObjectSizes = ObjectSizes(),
) -> tuple[int, int]:
    split_dir = root / name
    images_dir = split_dir / IMAGES_DIR_NAME
    images_dir.mkdir(parents=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(count):
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        image, objects = _render(seed, split_index, index, size, num_classes, objects_spec)
        image.save(images_dir / file_name, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
        images.append({"id": image_id, "file_name": file_name, "width": size[1], "height": size[0]})
        for label, (x, y, w, h) in objects:
            annotations.append(
                {
                    "id": len(annotations)
                    + 1,  # COCO ids start at 1 (COCOeval treats id 0 as unmatched)
                    "image_id": image_id,
                    "category_id": SHAPE_CATEGORIES[label][1],
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
    document = {
        "info": {
            "description": "effscale synthetic shapes",
            "version": "1",
            "seed": seed,
            "split": name,
        },
        "licenses": [],
        "categories": [
            {"id": cat_id, "name": cat_name, "supercategory": "shape"}
            for cat_name, cat_id in SHAPE_CATEGORIES[:num_classes]
        ],
        "images": images,
        "annotations": annotations,
    }
    (split_dir / ANN_FILE_NAME).write_text(
        json.dumps(document, separators=(",", ":")) + "\n", encoding="utf-8"
    )
    return count, len(annotations)


def make_synthetic_coco(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 256,
    n_val: int = 64,
    seed: int = 0,
    image_size: tuple[int, int] | int = (256, 256),
    num_classes: int = 6,
    objects: ObjectSizes = ObjectSizes(),
    overwrite: bool = False,
) -> SyntheticSummary:
    """Write a synthetic shapes dataset in the ``DIR/{train,val}/{instances.json,images/}`` layout.

    Args:
        out_dir: dataset folder to create; it must not exist or be empty, unless ``overwrite``.
        n_train: training images, ``>= 1``.
        n_val: validation images, ``>= 1``.
        seed: seed of everything drawn; the same seed gives byte-identical files.
        image_size: ``(height, width)`` in pixels, each 32..4096 (an int means square).
        num_classes: shape classes to use, ``1..8`` (see :data:`SHAPE_CATEGORIES`).
        objects: how many objects per image and how large (:class:`ObjectSizes`; pixels).
            Large objects and few classes make a set a tiny CPU proxy can learn in a few dozen
            steps.
        overwrite: replace an existing dataset folder (one holding only ``train``/``val``).

    Returns:
        A :class:`SyntheticSummary` with final paths and image/object counts.

    Raises:
        DataError: bad arguments, ``out_dir`` is a file, or ``out_dir`` is a non-empty folder and
            ``overwrite`` is false (or it holds more than ``train``/``val``, which is never replaced).

    Files are written to a temporary sibling folder and renamed into place, so an interrupted run
    never leaves a half-written dataset at ``out_dir``.
    """
    n_train = _check_count(n_train, "n_train")
    n_val = _check_count(n_val, "n_val")
    size = _check_image_size(image_size)
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or not 1 <= num_classes <= len(SHAPE_CATEGORIES)
    ):
        raise DataError(
            f"num_classes must be an integer in 1..{len(SHAPE_CATEGORIES)}, got {num_classes!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")

    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} exists and is not a folder; choose another dataset folder")
    existing = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if existing and not overwrite:
        raise DataError(
            f"{root} already exists and is not empty; pass --overwrite (overwrite=True) to replace it"
        )
    foreign = [name for name in existing if name not in SPLITS]
    if foreign:
        raise DataError(
            f"{root} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which is not part of a "
            "dataset, so it is not overwritten; choose an empty or new folder"
        )

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        counts = {}
        for split_index, (name, count) in enumerate(zip(SPLITS, (n_train, n_val))):
            counts[name] = _write_split(
                staging, name, split_index, count, size, num_classes, seed, objects
            )
        staging.chmod(0o755)
        if root.is_dir():
            trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, trash / "data")
            os.replace(staging, root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    splits = tuple(
        SplitSummary(
            name=name,
            images_dir=root / name / IMAGES_DIR_NAME,
            ann_file=root / name / ANN_FILE_NAME,
            num_images=counts[name][0],
            num_objects=counts[name][1],
        )
        for name in SPLITS
    )
    return SyntheticSummary(
        root=root, splits=splits, image_size=size, num_classes=num_classes, seed=seed
    )
