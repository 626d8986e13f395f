"""``effscale make-data DIR``: write the synthetic shapes dataset used by demos and tests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from effscale.detector.data.synthetic import MIN_OBJECT_SIZE, ObjectSizes, make_synthetic_coco

from ._types import nonnegative_int, positive_int

__all__ = ["configure", "run", "parse_image_size"]


def parse_image_size(text: str) -> tuple[int, int]:
    """Parse ``--image-size``: ``"256"`` (square) or ``"HxW"`` such as ``"256x192"`` (height x width, pixels)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = (values[0], values[0])
    if len(values) != 2 or not all(32 <= v <= 4096 for v in values):
        raise argparse.ArgumentTypeError(
            f"invalid image size {text!r}; use N or HxW (height x width) with each side 32..4096, e.g. 256 or 256x192"
        )
    return values


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``effscale make-data``."""
    parser.description = (
        "Write a synthetic shapes dataset (up to 8 classes, textured backgrounds, clutter, occlusion) as "
        "DIR/{train,val}/instances.json + images/. The same seed gives identical files."
    )
    parser.add_argument(
        "dir", metavar="DIR", help="dataset folder to create (must be new or empty)"
    )
    parser.add_argument(
        "--train",
        type=positive_int(),
        default=256,
        metavar="N",
        help="training images (default 256)",
    )
    parser.add_argument(
        "--val", type=positive_int(), default=64, metavar="N", help="validation images (default 64)"
    )
    parser.add_argument(
        "--seed",
        type=nonnegative_int("seed"),
        default=0,
        metavar="S",
        help="random seed (default 0)",
    )
    parser.add_argument(
        "--image-size",
        type=parse_image_size,
        default=(256, 256),
        metavar="SIZE",
        help="image size in pixels: N for square or HxW, height x width (default 256)",
    )
    parser.add_argument(
        "--num-classes",
        type=positive_int("number of classes"),
        default=6,
        metavar="K",
        help="shape classes, 1-8 (default 6; fewer is easier to learn)",
    )
    objects = parser.add_argument_group("objects (large, few objects are easy to learn)")
    objects.add_argument(
        "--min-object-size",
        type=positive_int("object size"),
        default=MIN_OBJECT_SIZE,
        metavar="PX",
        help=f"smallest long side of an object in pixels (default {MIN_OBJECT_SIZE})",
    )
    objects.add_argument(
        "--max-object-size",
        type=positive_int("object size"),
        default=None,
        metavar="PX",
        help="largest long side of an object in pixels (default: half the shorter image side)",
    )
    objects.add_argument(
        "--max-objects",
        type=positive_int("object count"),
        default=8,
        metavar="N",
        help="objects per image, 1 to N (default 8)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset in DIR"
    )
    parser.set_defaults(func=run)


#: what ``make-data`` writes into each split's ``info``; ``--overwrite`` replaces only such data
_SYNTHETIC = "effscale synthetic shapes"


def _check_own_dataset(root: Path) -> None:
    """With ``--overwrite``, refuse a non-empty ``root`` unless each of its splits is a dataset
    that ``make-data`` wrote (its ``instances.json`` ``info.description``): a real dataset in
    the same ``train/`` + ``val/`` layout is never replaced."""
    if not root.is_dir() or not any(root.iterdir()):
        return
    for split in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            info = json.loads((split / "instances.json").read_text()).get("info") or {}
        except (OSError, ValueError, AttributeError, RecursionError):
            info = {}
        if not isinstance(info, dict) or info.get("description") != _SYNTHETIC:
            raise ValueError(
                f"--overwrite: {split} is not a dataset written by effscale make-data "
                f"(no info.description {_SYNTHETIC!r} in its instances.json), so it is not "
                "replaced; choose a new folder"
            )


def run(args: argparse.Namespace) -> int:
    """Write the dataset described by ``args`` and print one summary line; returns 0."""

    if args.overwrite:
        _check_own_dataset(Path(args.dir))
    summary = make_synthetic_coco(
        args.dir,
        n_train=args.train,
        n_val=args.val,
        seed=args.seed,
        image_size=args.image_size,
        num_classes=args.num_classes,
        objects=ObjectSizes(
            min_size=args.min_object_size,
            max_size=args.max_object_size,
            max_count=args.max_objects,
        ),
        overwrite=args.overwrite,
    )
    print(summary.describe())
    return 0
