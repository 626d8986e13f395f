"""A study's data: where its splits lie, the generated set made once on first use, the checks
both splits pass before the first trial, and the number of classes its detectors are built for."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from effscale.detector.data.layout import SPLITS, CocoSplit, locate_split
from effscale.detector.data.synthetic import ObjectSizes, make_synthetic_coco
from effscale.detector.data.validate import validate_data

from .definition import DataSection, GenerateSpec, StudyDefinition
from .errors import ParameterError

__all__ = [
    "COCO_CLASSES",
    "data_splits",
    "generated_data_folder",
    "prepare_data",
    "study_num_classes",
]

#: the classes a study's models get when nothing else says (COCO's 90 category ids)
COCO_CLASSES = 90


def data_splits(data: DataSection) -> tuple[CocoSplit, CocoSplit]:
    """The train and val files of a data section whose splits lie on disk (``dir``, or
    ``train`` and ``val``; a ``generate`` section once :func:`prepare_data` set its ``dir``).

    Raises:
        effscale.detector.data.DataError: a split's files are missing (naming them and the fix).
    """
    train, val = (
        locate_split(name, data_dir=data.dir, files=getattr(data, name)) for name in SPLITS
    )
    return train, val


def _listed_categories(data: DataSection) -> int:
    train, _ = data_splits(data)
    try:
        categories = json.loads(train.annotations.read_bytes()).get("categories") or []
    except (ValueError, AttributeError, RecursionError):
        categories = []
    if not categories:
        key = "data.dir" if data.dir is not None else "data.train.annotations"
        raise ParameterError(
            key,
            f"{train.annotations} lists no categories",
            "give [base] num_classes or fix the annotation file",
        )
    return len(categories)


def _default_objects(g: GenerateSpec) -> bool:
    """Whether the generated objects are the default ones (the folder name then stays as it
    was before the object options existed)."""
    return (g.min_object_size, g.max_object_size, g.max_objects) == (8, None, 8)


def generated_data_folder(definition: StudyDefinition) -> Path:
    """Where ``[data] generate`` data lives: ``.effscale-cache/data-<stem>-<hash>`` next to the
    study file, named by a hash of its settings."""
    g = definition.data.generate if definition.data is not None else None
    if g is None:
        raise ParameterError("data.generate", "not set", "give [data] generate = {train, val}")
    key = hashlib.sha256(
        json.dumps(
            [g.train, g.val, g.seed, g.image_size, g.num_classes]
            + ([] if _default_objects(g) else [g.min_object_size, g.max_object_size, g.max_objects])
        ).encode()
    ).hexdigest()[:10]
    return definition.folder / ".effscale-cache" / f"data-{definition.path.stem}-{key}"


def prepare_data(definition: StudyDefinition) -> tuple[DataSection | None, int]:
    """The data section with its splits on disk (``dir``, or ``train`` and ``val``), checked,
    and the number of classes.

    ``generate`` data is made once into :func:`generated_data_folder` and reused. Both splits
    are then checked by :func:`effscale.detector.data.validate_data` (every annotation record,
    every image file's type, a decoded sample; see :mod:`effscale.detector.data.validate`), so
    bad data is refused here, before a runner touches the storage. The classes are the data's;
    ``[base] num_classes``, when given, must agree. A surrogate study needs no data: it gets
    ``(None, classes)`` with classes from ``[base] num_classes`` (90 when not given).

    Raises:
        effscale.detector.data.DataError: a split is missing or bad (one line naming the file,
            the record and the fix).
    """
    d = definition
    if d.objective.kind != "train" or d.data is None:
        return None, d.base.num_classes or COCO_CLASSES
    data = d.data
    if data.generate is not None:
        g = data.generate
        folder = generated_data_folder(d)
        if not (folder / "val" / "instances.json").is_file():
            try:
                make_synthetic_coco(
                    folder,
                    n_train=g.train,
                    n_val=g.val,
                    seed=g.seed,
                    image_size=g.image_size,
                    num_classes=g.num_classes,
                    objects=ObjectSizes(
                        min_size=g.min_object_size,
                        max_size=g.max_object_size,
                        max_count=g.max_objects,
                    ),
                )
            except (OSError, ValueError):
                if not (folder / "val" / "instances.json").is_file():  # not another process's
                    raise
        data = replace(data, dir=folder)
    train_check, _ = validate_data(*data_splits(data))
    classes = data.generate.num_classes if data.generate is not None else train_check.num_classes
    if d.base.num_classes not in (None, classes):
        raise ParameterError(
            "base.num_classes",
            f"{d.base.num_classes}, but the data has {classes} classes",
            f"drop num_classes or set it to {classes}",
        )
    return data, classes


def study_num_classes(definition: StudyDefinition) -> int:
    """The classes a study's models are built for, without making or touching its images:
    ``[base] num_classes``, else the generated data's classes, else the categories listed in
    the training annotations, else 90 (COCO)."""
    d = definition
    if d.base.num_classes is not None:
        return int(d.base.num_classes)
    if d.data is not None and d.data.generate is not None:
        return int(d.data.generate.num_classes)
    if d.data is not None and (d.data.dir is not None or d.data.splits()):
        return _listed_categories(d.data)
    return COCO_CLASSES
