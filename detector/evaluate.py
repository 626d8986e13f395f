"""COCO evaluation: decode, NMS, map back to the original image frame, then pycocotools.

:func:`coco_metrics` scores a list of detections in COCO's result format against any
COCO-format annotation set; :func:`evaluate_model` runs a model over a split and calls it.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval

from .anchors import cached_anchors, flatten_outputs
from .config import DetectorConfig
from .data import normalize
from .postprocess import PostprocessConfig, decode_detections

__all__ = ["METRIC_NAMES", "coco_metrics", "detections_to_coco", "evaluate_model"]

#: the six COCO box metrics, in COCOeval's ``stats`` order (each in [0, 1])
METRIC_NAMES = ("ap", "ap50", "ap75", "aps", "apm", "apl")


def coco_metrics(
    coco_gt, results: list[dict], *, image_ids: Iterable[int] | None = None
) -> dict[str, float]:
    """COCO box AP of ``results`` against ``coco_gt`` (a ``pycocotools.coco.COCO``).

    ``results`` are COCO result dicts (``image_id``, ``category_id``, ``bbox`` as
    ``[x, y, w, h]`` in original-image pixels, ``score``). ``image_ids`` limits the evaluation
    (default: every image of ``coco_gt``). Returns ``METRIC_NAMES`` → value in [0, 1]; a metric
    that COCOeval reports as undefined (-1: no ground truth of that size) is returned as 0.0 for
    ``ap`` and as NaN for the size breakdown. No detections at all gives AP 0.
    """

    ids = sorted(int(i) for i in (image_ids if image_ids is not None else coco_gt.getImgIds()))
    if not results:
        return {name: 0.0 if name in ("ap", "ap50", "ap75") else math.nan for name in METRIC_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats[:6]
    metrics = {}
    for name, value in zip(METRIC_NAMES, stats):
        value = float(value)
        if value < 0:
            value = 0.0 if name in ("ap", "ap50", "ap75") else math.nan
        metrics[name] = value
    return metrics


def detections_to_coco(
    detections: list[dict[str, torch.Tensor]],
    *,
    image_ids: torch.Tensor,
    scales: torch.Tensor,
    label_to_category_id,
    num_classes: int | None = None,
) -> list[dict]:
    """Turn per-image detections (``boxes`` xyxy in network-input pixels, ``scores``, ``labels``
    contiguous) into COCO results: boxes multiplied by each image's ``scale`` (original pixels
    per input pixel) and written as ``[x, y, w, h]``, labels mapped to category ids.

    With ``num_classes`` (the dataset's), detections of labels ``>= num_classes`` are dropped:
    a model built with spare classes trains them as background, and the dataset has no
    category for them."""
    results = []
    for det, image_id, scale in zip(detections, image_ids.tolist(), scales.tolist()):
        boxes = det["boxes"].float().cpu().numpy() * scale
        scores = det["scores"].float().cpu().numpy()
        labels = det["labels"].cpu().numpy()
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
            if num_classes is not None and label >= num_classes:
                continue
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label_to_category_id(int(label))),
                    "bbox": [round(v, 2) for v in box],
                    "score": round(float(score), 5),
                }
            )
    return results


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    loader,
    *,
    config: DetectorConfig,
    dataset,
    device: torch.device | str = "cpu",
    postprocess: PostprocessConfig | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """COCO metrics of ``model`` on every batch of ``loader`` (an evaluation loader of
    :class:`effscale.detector.data.DetectionBatch`) over ``dataset`` (a ``CocoDetection``, for its
    ``coco`` ground truth and label mapping). Returns ``METRIC_NAMES`` → value in [0, 1]."""

    postprocess = postprocess or PostprocessConfig.for_coco_eval()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    anchors = cached_anchors(
        config.anchors, config.image_size, config.min_level, config.max_level, device=device
    )
    results: list[dict] = []
    image_ids: list[int] = []
    try:
        for batch in loader:
            batch = batch.to(device)
            images = normalize(batch.images)
            with torch.autocast(
                device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                cls_levels, box_levels = model(images)
            cls, box = flatten_outputs(cls_levels, box_levels, config.num_classes)
            detections = decode_detections(
                cls.float(), box.float(), anchors, config=postprocess, image_size=config.image_size
            )
            results += detections_to_coco(
                detections,
                image_ids=batch.image_ids,
                scales=batch.scales,
                label_to_category_id=dataset.label_to_category_id,
                num_classes=dataset.num_classes,
            )
            image_ids += batch.image_ids.tolist()
    finally:
        model.train(was_training)
    return coco_metrics(dataset.coco, results, image_ids=image_ids)
