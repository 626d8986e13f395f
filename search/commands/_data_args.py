"""Arguments that say where a dataset lies: ``--data DIR`` (the folder contract) or, per split,
``--train-annotations FILE --train-images DIR`` and ``--val-annotations FILE --val-images DIR``
(COCO as downloaded); a split given by its files is used instead of ``--data``'s."""

from __future__ import annotations

import argparse
from pathlib import Path

from effscale.detector.data.layout import SPLITS, CocoSplit, locate_split

from ..errors import ParameterError
from ..output import shell_path

__all__ = ["add_data_arguments", "splits_from_args"]


def add_data_arguments(parser: argparse.ArgumentParser, *, needs: str) -> None:
    """Add ``--data`` and the four per-split flags; ``needs`` says in the help which splits the
    command reads."""
    group = parser.add_argument_group(
        "data",
        f"{needs}: --data DIR, or a split's annotation file and image folder wherever they lie "
        "(COCO as downloaded: annotations/instances_train2017.json and train2017/)",
    )
    group.add_argument(
        "--data",
        metavar="DIR",
        help="dataset folder with train/ and val/ (each: instances.json + images/); make one "
        "with `effscale make-data`",
    )
    for split in SPLITS:
        group.add_argument(
            f"--{split}-annotations",
            metavar="FILE",
            help=f"COCO instances json of the {split} split (with --{split}-images)",
        )
        group.add_argument(
            f"--{split}-images",
            metavar="DIR",
            help=f"folder that the {split} json's file_name entries are relative to",
        )


def splits_from_args(args: argparse.Namespace, splits: tuple[str, ...]) -> dict[str, CocoSplit]:
    """The files of each of ``splits`` from the flags of :func:`add_data_arguments`.

    Raises:
        ParameterError: naming the flag (``train_images`` is shown as ``--train-images``): a
            pair given by half, a split with no location, a path that is missing.
        effscale.detector.data.DataError: a split folder under ``--data`` is incomplete.
    """
    data_dir = Path(args.data) if args.data else None
    if data_dir is not None and not data_dir.is_dir():
        raise ParameterError(
            "data",
            f"dataset folder not found: {data_dir}",
            f"create one with `effscale make-data {shell_path(data_dir)}`, or give the split's "
            "annotation file and image folder",
        )
    found: dict[str, CocoSplit] = {}
    for split in SPLITS:
        annotations = getattr(args, f"{split}_annotations", None)
        images = getattr(args, f"{split}_images", None)
        if (annotations is None) != (images is None):
            given, missing = (
                ("annotations", "images") if images is None else ("images", "annotations")
            )
            raise ParameterError(
                f"{split}_{missing}",
                f"missing (`{split}_{given}` is given)",
                f"give both `{split}_annotations` and `{split}_images`",
            )
        if split not in splits:
            continue
        if annotations is None or images is None:
            if data_dir is None:
                raise ParameterError(
                    "data",
                    f"the {split} split has no location",
                    f"give `data` DIR, or `{split}_annotations` FILE and `{split}_images` DIR",
                )
            found[split] = locate_split(split, data_dir=data_dir)
            continue
        files = CocoSplit(annotations=Path(annotations), images=Path(images))
        if not files.annotations.is_file():
            raise ParameterError(
                f"{split}_annotations",
                f"{files.annotations} is not a file",
                "give the split's COCO instances json",
            )
        if not files.images.is_dir():
            raise ParameterError(
                f"{split}_images",
                f"{files.images} is not a folder",
                "give the folder that the json's file_name entries are relative to",
            )
        found[split] = files
    return found
