"""Turn flattened head outputs into per-image detections: top-k, decode, clip, NMS.

The heavy work is batched over images: one ``topk`` over the ``N * C`` sigmoid scores of every
image, one decode, and a single ``torchvision.ops.nms`` call for the whole batch, with boxes of
different (image, class) groups moved apart so they can never suppress each other (the
coordinate trick of ``torchvision.ops.batched_nms``, done here in float64 so the offsets do not
cost sub-pixel precision, and without ``batched_nms``'s fallback to a Python loop over groups
for large inputs). Only splitting the kept detections into the per-image list syncs with the
host. Not meant for ``torch.compile`` (the outputs have data-dependent sizes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torchvision
from torch import Tensor

from .anchors import check_flat_outputs
from .box_coding import decode

__all__ = ["PostprocessConfig", "decode_detections"]


@dataclass(frozen=True)
class PostprocessConfig:
    """Detection post-processing settings.

    Attributes:
        score_threshold (float): candidates with sigmoid score below this are dropped
            (0.05 is fast for training-time monitoring; COCO evaluation uses 0.001, see
            :meth:`for_coco_eval`).
        iou_threshold (float): NMS IoU above which a lower-scored box of the same class and image
            is suppressed.
        max_candidates (int): top-k (anchor, class) pairs per image kept before NMS
            (official: 5000).
        max_detections (int): detections kept per image after NMS (COCO: 100).
    """

    score_threshold: float = 0.05
    iou_threshold: float = 0.5
    max_candidates: int = 5000
    max_detections: int = 100

    def __post_init__(self) -> None:
        def number(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def integer(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("score_threshold", "iou_threshold"):
            value = getattr(self, name)
            if not (number(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
        for name in ("max_candidates", "max_detections"):
            value = getattr(self, name)
            if not (integer(value) and value >= 1):
                raise ValueError(f"{name}: expected a positive int, got {value!r}")

    @classmethod
    def for_coco_eval(cls, **changes: Any) -> PostprocessConfig:
        """The COCO-evaluation setting: ``score_threshold=0.001`` (other fields as given)."""
        return replace(cls(score_threshold=0.001), **changes)


def _describe(value: object) -> object:
    """The shape of a tensor (for error messages), or the type name of anything else."""
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def _check_image_size(image_size: object) -> tuple[int, int]:
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size)
    ):
        raise ValueError(
            "image_size: expected (height, width) as two positive ints (pixels), "
            f"got {image_size!r}"
        )
    return int(image_size[0]), int(image_size[1])


@torch.no_grad()
def decode_detections(
    cls_outputs: Tensor,
    box_outputs: Tensor,
    anchors: Tensor,
    *,
    config: PostprocessConfig = PostprocessConfig(),
    image_size: Sequence[int],
) -> list[dict[str, Tensor]]:
    """Detections of every image in a batch.

    Per image: sigmoid scores of all ``N * C`` (anchor, class) pairs, top
    ``config.max_candidates`` of them, drop those below ``config.score_threshold``, decode
    their anchors' deltas, clip to the image, class-wise NMS at ``config.iou_threshold``, keep
    the ``config.max_detections`` best.

    Args:
        cls_outputs (Tensor[B, N, C]): class logits in anchor order.
        box_outputs (Tensor[B, N, 4]): ``(dy, dx, dh, dw)`` regressions.
        anchors (Tensor[N, 4]): ``(x1, y1, x2, y2)`` anchors in input pixels.
        config (PostprocessConfig): thresholds and limits.
        image_size ((int, int)): input ``(height, width)`` in pixels; boxes are clipped to
            ``[0, width] x [0, height]``.

    Returns:
        list of ``B`` dicts, each with
            ``boxes`` (Tensor[K, 4] float32): ``(x1, y1, x2, y2)`` in input pixels, clipped;
            ``scores`` (Tensor[K] float32): sigmoid probabilities, descending;
            ``labels`` (Tensor[K] int64): class indices in ``[0, C)`` (no background offset);
        with ``K <= config.max_detections`` varying per image.
    """
    if not isinstance(config, PostprocessConfig):
        raise ValueError(f"config: expected a PostprocessConfig, got {type(config).__name__}")
    height, width = _check_image_size(image_size)
    batch, num_anchors, num_classes = check_flat_outputs(cls_outputs, box_outputs, anchors)
    device = cls_outputs.device

    k = min(config.max_candidates, num_anchors * num_classes)
    scores, flat_index = torch.topk(cls_outputs.float().reshape(batch, -1), k, dim=1)  # [B, k]
    scores = scores.sigmoid()  # monotonic: top-k on logits == top-k on scores
    anchor_index = torch.div(flat_index, num_classes, rounding_mode="floor")
    labels = flat_index - anchor_index * num_classes
    deltas = box_outputs.gather(1, anchor_index[..., None].expand(batch, k, 4))
    anchors = anchors.to(device=device, dtype=torch.float32)
    boxes = decode(deltas.float(), anchors[anchor_index])  # [B, k, 4] float32
    limits = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=device)
    boxes = torch.minimum(boxes.clamp(min=0), limits)

    image_index = torch.arange(batch, device=device)[:, None].expand(batch, k)
    keep = (scores >= config.score_threshold).reshape(-1)
    boxes = boxes.reshape(-1, 4)[keep]
    scores = scores.reshape(-1)[keep]
    labels = labels.reshape(-1)[keep]
    image_index = image_index.reshape(-1)[keep]

    # One NMS over the batch: translate every (image, class) group to its own region.
    group = (image_index * num_classes + labels).to(torch.float64)
    offsets = group[:, None] * float(max(height, width) + 1)
    kept = torchvision.ops.nms(  # indices by decreasing score
        boxes.double() + offsets, scores.double(), config.iou_threshold
    )
    # Stable sort by image keeps the score order within each image.
    kept = kept[torch.sort(image_index[kept], stable=True).indices]
    kept_image = image_index[kept]
    counts = torch.bincount(kept_image, minlength=batch)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(kept.numel(), device=device) - first[kept_image]
    kept = kept[rank < config.max_detections]
    counts = counts.clamp(max=config.max_detections)

    sizes = counts.tolist()
    return [
        {"boxes": b, "scores": s, "labels": c}
        for b, s, c in zip(
            boxes[kept].split(sizes), scores[kept].split(sizes), labels[kept].split(sizes)
        )
    ]
