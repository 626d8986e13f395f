"""``effscale make-data DIR``: write the synthetic shapes dataset used by demos and tests."""

from __future__ import annotations

import argparse

from effscale.detector.data.synthetic import make_synthetic_coco

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
        "Write a synthetic shapes dataset (6 classes, textured backgrounds, clutter, occlusion) as "
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
        "--overwrite", action="store_true", help="replace an existing dataset in DIR"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the dataset described by ``args`` and print one summary line; returns 0."""

    summary = make_synthetic_coco(
        args.dir,
        n_train=args.train,
        n_val=args.val,
        seed=args.seed,
        image_size=args.image_size,
        overwrite=args.overwrite,
    )
    print(summary.describe())
    return 0
