"""A study's data: the generated set made once on first use, and the number of classes its
detectors are built for."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from effscale.detector.data.coco import split_paths
from effscale.detector.data.synthetic import make_synthetic_coco

from .definition import DataSection, StudyDefinition
from .errors import ParameterError

__all__ = ["COCO_CLASSES", "generated_data_folder", "prepare_data", "study_num_classes"]

#: the classes a study's models get when nothing else says (COCO's 90 category ids)
COCO_CLASSES = 90


def _listed_categories(data_dir: Path) -> int:
    _, ann_file = split_paths(data_dir, "train")
    split_paths(data_dir, "val")
    categories = json.loads(ann_file.read_text()).get("categories") or []
    if not categories:
        raise ParameterError(
            "data.dir", f"{ann_file} lists no categories", "give [base] num_classes"
        )
    return len(categories)


def generated_data_folder(definition: StudyDefinition) -> Path:
    """Where ``[data] generate`` data lives: ``.effscale-cache/data-<stem>-<hash>`` next to the
    study file, named by a hash of its settings."""
    g = definition.data.generate if definition.data is not None else None
    if g is None:
        raise ParameterError("data.generate", "not set", "give [data] generate = {train, val}")
    key = hashlib.sha256(
        json.dumps([g.train, g.val, g.seed, g.image_size, g.num_classes]).encode()
    ).hexdigest()[:10]
    return definition.folder / ".effscale-cache" / f"data-{definition.path.stem}-{key}"


def prepare_data(definition: StudyDefinition) -> tuple[DataSection | None, int]:
    """The data section with ``dir`` pointing at real files, and the number of classes.

    ``generate`` data is made once into :func:`generated_data_folder` and reused. The classes are
    the data's; ``[base] num_classes``, when given, must agree. A surrogate study needs no data:
    it gets ``(None, classes)`` with classes from ``[base] num_classes`` (90 when not given).
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
                )
            except (OSError, ValueError):
                if not (folder / "val" / "instances.json").is_file():  # not another process's
                    raise
        data = replace(data, dir=folder)
        classes = g.num_classes
    else:
        assert data.dir is not None
        classes = _listed_categories(data.dir)
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
    if d.data is not None and d.data.dir is not None:
        return _listed_categories(d.data.dir)
    return COCO_CLASSES
