"""EfficientDet training loss: batched anchor target assignment, focal loss and Huber box loss.

Everything is vectorized over the batch, works on any device, keeps static shapes, never syncs
with the host and has no data-dependent Python branches, so it can run inside ``torch.compile``
/ CUDA graphs. All arithmetic is float32 whatever the dtype of the model outputs (the outputs
are upcast first), so it is safe under bf16 autocast.

Semantics follow the official google/automl EfficientDet (and effdet 0.4.1):

* **Matching** (:func:`assign_targets`): IoU between every real ground-truth box and every anchor;
  each anchor takes its highest-IoU box (the first one on ties). Best IoU ``>= match_iou`` →
  positive, ``< unmatch_iou`` → negative, in between → ignored. Then every real box is
  force-matched to its highest-IoU anchor (first on ties; when two boxes force-match the same
  anchor, the lower box index wins), overriding that anchor's state (official
  ``force_match_for_each_row=True``). The official release uses ``match_iou == unmatch_iou ==
  0.5`` (no ignored band); our defaults (0.5 / 0.4) add RetinaNet's ignored band, whose anchors
  get no classification loss (the official ``cls_targets == -2`` mask).
* **Classification**: sigmoid focal loss (official "new" form: ``alpha_t * (1 - p_t)**gamma *
  BCE``, label smoothing ``t * (1 - ls) + ls / 2`` applied to the BCE target only), summed over
  all classes of all non-ignored anchors of the batch, divided by ``num_positives + 1`` where
  ``num_positives`` is the number of positive anchors summed over the whole batch.
* **Box regression**: Huber loss (``0.5 e**2`` for ``|e| <= delta``, else ``delta * (|e| -
  delta / 2)``) between predicted and encoded ``(dy, dx, dh, dw)`` deltas of the positive
  anchors, summed over the batch and divided by ``4 * (num_positives + 1)`` — exactly the
  official ``_box_loss`` normalizer ``num_positives_sum * 4`` with ``num_positives_sum =
  num_positives + 1``.
* **Total**: ``cls_loss + box_weight * box_loss``.

Deliberate differences from the official code, both for inputs the official code mishandles:
the official box loss masks elementwise with ``box_targets != 0``, which also drops a positive's
coordinate whose target is exactly 0 (e.g. a box centred exactly on its anchor); we mask by the
positive anchors. Boxes with zero or negative width or height are treated as padding (the
official code would force-match them to anchor 0 with a ``log(0)`` size target).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anchors import check_flat_outputs
from .box_coding import encode

__all__ = ["AnchorTargets", "assign_targets", "pairwise_iou", "focal_loss", "DetectionLoss"]

#: Default work budget of :func:`assign_targets`: IoU is computed for at most this many
#: (image, box, anchor) triples at a time (64 MiB per float32 temporary).
IOU_CHUNK_ELEMENTS = 1 << 24


class AnchorTargets(NamedTuple):
    """Per-anchor training targets of a batch (``B`` images, ``N`` anchors).

    Attributes:
        labels (Tensor[B, N] int64): class in ``[0, C)`` for positive anchors, ``-1`` for
            negatives (background), ``-2`` for ignored anchors.
        box_targets (Tensor[B, N, 4] float32): encoded ``(dy, dx, dh, dw)`` of the matched box
            for positive anchors, 0 elsewhere.
        matched_gt (Tensor[B, N] int64): index into the ``M`` ground-truth rows for positive
            anchors, ``-1`` / ``-2`` for negative / ignored ones (the official ``match_results``).
        num_positives (Tensor[B] float32): positive anchors per image.
    """

    labels: Tensor
    box_targets: Tensor
    matched_gt: Tensor
    num_positives: Tensor


def pairwise_iou(boxes: Tensor, anchors: Tensor) -> Tensor:
    """IoU between every box of each image and every anchor.

    Args:
        boxes (Tensor[B, M, 4]): ``(x1, y1, x2, y2)`` pixels.
        anchors (Tensor[N, 4]): ``(x1, y1, x2, y2)`` pixels.

    Returns:
        iou (Tensor[B, M, N]): intersection over union in ``[0, 1]`` (0 where the union is
        empty), in the promoted dtype of the inputs.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes: expected shape [B, M, 4], got {tuple(boxes.shape)}")
    if anchors.dim() != 2 or anchors.shape[-1] != 4:
        raise ValueError(f"anchors: expected shape [N, 4], got {tuple(anchors.shape)}")
    b = boxes[:, :, None, :]  # [B, M, 1, 4]
    a = anchors[None, None, :, :]  # [1, 1, N, 4]
    inter_w = torch.minimum(b[..., 2], a[..., 2]) - torch.maximum(b[..., 0], a[..., 0])
    inter_h = torch.minimum(b[..., 3], a[..., 3]) - torch.maximum(b[..., 1], a[..., 1])
    inter = inter_w.clamp(min=0) * inter_h.clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    union = area_b + area_a - inter
    return torch.where(inter > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), 0.0)


def _describe(value: object) -> object:
    """The shape of a tensor (for error messages), or the type name of anything else."""
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def _check_thresholds(match_iou: float, unmatch_iou: float) -> None:
    if not (
        isinstance(match_iou, (int, float))
        and isinstance(unmatch_iou, (int, float))
        and 0.0 < unmatch_iou <= match_iou <= 1.0
    ):
        raise ValueError(
            "match_iou/unmatch_iou: expected 0 < unmatch_iou <= match_iou <= 1, "
            f"got match_iou={match_iou!r}, unmatch_iou={unmatch_iou!r}"
        )


def _check_gt(anchors: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> None:
    if not isinstance(anchors, Tensor) or anchors.dim() != 2 or anchors.shape[1] != 4:
        raise ValueError(
            f"anchors: expected shape [N, 4] (x1, y1, x2, y2 pixels), got {_describe(anchors)}"
        )
    if not isinstance(gt_boxes, Tensor) or gt_boxes.dim() != 3 or gt_boxes.shape[2] != 4:
        raise ValueError(
            f"gt_boxes: expected shape [B, M, 4] (x1, y1, x2, y2 pixels), got {_describe(gt_boxes)}"
        )
    b, m = gt_boxes.shape[:2]
    if not isinstance(gt_labels, Tensor) or tuple(gt_labels.shape) != (b, m):
        raise ValueError(
            f"gt_labels: expected shape [{b}, {m}] (B, M) matching gt_boxes, got "
            f"{_describe(gt_labels)}"
        )
    if gt_labels.is_floating_point() or gt_labels.is_complex() or gt_labels.dtype == torch.bool:
        raise ValueError(f"gt_labels: expected an integer tensor (int64), got {gt_labels.dtype}")
    if not anchors.is_floating_point() or not gt_boxes.is_floating_point():
        raise ValueError(
            f"anchors/gt_boxes: expected floating-point tensors, got {anchors.dtype} and "
            f"{gt_boxes.dtype}"
        )


def assign_targets(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    match_iou: float = 0.5,
    unmatch_iou: float = 0.4,
    force_match: bool = True,
    chunk_elements: int = IOU_CHUNK_ELEMENTS,
) -> AnchorTargets:
    """Match anchors to ground-truth boxes for a whole batch (see the module docstring).

    The IoU ``[B, M, N]`` is computed in chunks of boxes so that at most ``chunk_elements``
    IoU values exist at once; only per-anchor running maxima ``[B, N]`` and per-box argmaxes
    ``[B, M]`` are kept. The chunk count depends on shapes only (static under ``torch.compile``).

    Args:
        anchors (Tensor[N, 4]): ``(x1, y1, x2, y2)`` anchors in input pixels.
        gt_boxes (Tensor[B, M, 4]): ``(x1, y1, x2, y2)`` boxes in input pixels; rows whose label
            is ``-1`` are padding and may hold anything (even NaN). ``M`` may be 0.
        gt_labels (Tensor[B, M] int64): class in ``[0, C)``, or ``-1`` for padding.
        match_iou (float): best IoU at or above which an anchor is positive.
        unmatch_iou (float): best IoU below which an anchor is negative; anchors in between
            are ignored.
        force_match (bool): also match every real box to its best anchor (official: True).
        chunk_elements (int): IoU work budget, in (image, box, anchor) triples.

    Returns:
        AnchorTargets: ``labels [B, N]``, ``box_targets [B, N, 4]``, ``matched_gt [B, N]``,
        ``num_positives [B]``, all on ``anchors.device``.
    """
    _check_gt(anchors, gt_boxes, gt_labels)
    _check_thresholds(match_iou, unmatch_iou)
    if not (isinstance(chunk_elements, int) and chunk_elements >= 1):
        raise ValueError(f"chunk_elements: expected a positive int, got {chunk_elements!r}")
    batch, num_gt = gt_labels.shape
    num_anchors = anchors.shape[0]
    device = anchors.device
    anchors = anchors.float()
    gt_labels = gt_labels.to(device=device, dtype=torch.int64)
    gt_boxes = gt_boxes.to(device=device, dtype=torch.float32)

    # Real boxes: labelled and with positive area. Everything else is replaced by a harmless
    # unit box so that padding garbage (NaN/inf) never reaches arithmetic.
    valid = (
        (gt_labels >= 0)
        & (gt_boxes[..., 2] > gt_boxes[..., 0])
        & (gt_boxes[..., 3] > gt_boxes[..., 1])
    )  # [B, M]
    # [0, 0, 1, 1] built by a kernel rather than a host copy (safe inside CUDA-graph capture).
    unit_box = (torch.arange(4, device=device) >= 2).float()
    gt_boxes = torch.where(valid[..., None], gt_boxes, unit_box)

    best_iou = torch.full((batch, num_anchors), -1.0, device=device)
    best_gt = torch.zeros((batch, num_anchors), dtype=torch.int64, device=device)
    best_anchor_per_gt = []
    chunk = max(1, chunk_elements // max(1, batch * num_anchors))
    for start in range(0, num_gt, chunk):
        stop = min(start + chunk, num_gt)
        iou = pairwise_iou(gt_boxes[:, start:stop], anchors)  # [B, m, N]
        iou = iou.masked_fill(~valid[:, start:stop, None], -1.0)
        chunk_best, chunk_arg = iou.max(dim=1)  # over boxes; first index on ties
        better = chunk_best > best_iou  # strict: earlier chunks win ties
        best_iou = torch.where(better, chunk_best, best_iou)
        best_gt = torch.where(better, chunk_arg + start, best_gt)
        best_anchor_per_gt.append(iou.argmax(dim=2))  # [B, m]

    matched = torch.where(
        best_iou >= match_iou,
        best_gt,
        torch.where(best_iou < unmatch_iou, -1, -2).to(best_gt.dtype),
    )
    if force_match and num_gt > 0:
        best_anchor = torch.cat(best_anchor_per_gt, dim=1)  # [B, M]
        rows = torch.arange(num_gt, device=device).expand(batch, num_gt)
        rows = torch.where(valid, rows, num_gt)  # padding rows never win
        forced_row = torch.full((batch, num_anchors), num_gt, dtype=torch.int64, device=device)
        forced_row = forced_row.scatter_reduce(
            1, best_anchor, rows, reduce="amin", include_self=True
        )
        matched = torch.where(forced_row < num_gt, forced_row, matched)

    positive = matched >= 0
    index = matched.clamp(min=0)
    if num_gt > 0:
        matched_labels = gt_labels.gather(1, index)
        matched_boxes = gt_boxes.gather(1, index[..., None].expand(batch, num_anchors, 4))
    else:  # static: no boxes in the whole batch, nothing can be positive
        matched_labels = torch.zeros_like(matched)
        matched_boxes = unit_box.expand(batch, num_anchors, 4)
    labels = torch.where(positive, matched_labels, matched)
    box_targets = torch.where(positive[..., None], encode(matched_boxes, anchors), 0.0)
    return AnchorTargets(
        labels=labels,
        box_targets=box_targets,
        matched_gt=matched,
        num_positives=positive.sum(dim=1).float(),
    )


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 1.5,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Elementwise sigmoid focal loss (unreduced, unnormalized), computed in float32.

    ``alpha_t * (1 - p_t)**gamma * BCE(logits, t')`` with ``p_t`` the probability of the true
    binary label, ``alpha_t = alpha`` for positives and ``1 - alpha`` for negatives, and
    ``t' = t * (1 - label_smoothing) + label_smoothing / 2`` (smoothing affects only the BCE, as
    in the official code). The modulating factor is computed as ``exp(gamma *
    logsigmoid(±logits))``, which is exact and has finite gradients for any ``gamma >= 0``.

    Args:
        logits (Tensor[...]): raw class scores (any float dtype).
        targets (Tensor[...]): binary targets in {0, 1}, same shape.
        alpha (float): positive-class weight in [0, 1].
        gamma (float): focusing exponent (>= 0).
        label_smoothing (float): in [0, 1).

    Returns:
        Tensor[...] float32: the loss of each element (nats).
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"targets: expected the shape of logits {tuple(logits.shape)}, "
            f"got {tuple(targets.shape)}"
        )
    logits = logits.float()
    is_pos = targets > 0.5
    targets = is_pos.float()
    # 1 - p_t = sigmoid(-logits) for positives, sigmoid(logits) for negatives.
    signed = torch.where(is_pos, -logits, logits)
    modulator = torch.exp(gamma * F.logsigmoid(signed))
    alpha_t = torch.where(is_pos, alpha, 1.0 - alpha)
    if label_smoothing > 0:
        targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return alpha_t * modulator * bce


def _huber(error: Tensor, delta: float) -> Tensor:
    abs_err = error.abs()
    quadratic = abs_err.clamp(max=delta)
    return 0.5 * quadratic * quadratic + delta * (abs_err - quadratic)


class DetectionLoss(nn.Module):
    """EfficientDet loss: focal classification loss + weighted Huber box loss.

    See the module docstring for the exact matching and normalization. The module has no
    parameters or buffers.

    Args:
        num_classes (int): ``C``, number of foreground classes (no background class).
        alpha (float): focal-loss positive weight.
        gamma (float): focal-loss focusing exponent.
        huber_delta (float): Huber transition point, in delta units (dimensionless).
        box_weight (float): weight of the box loss in the total.
        match_iou (float): IoU at or above which an anchor is positive.
        unmatch_iou (float): IoU below which an anchor is negative (between: ignored). Use
            ``unmatch_iou=match_iou`` for the official release's behaviour.
        label_smoothing (float): focal-loss label smoothing in [0, 1).
        force_match (bool): force-match every real box to its best anchor.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        alpha: float = 0.25,
        gamma: float = 1.5,
        huber_delta: float = 0.1,
        box_weight: float = 50.0,
        match_iou: float = 0.5,
        unmatch_iou: float = 0.4,
        label_smoothing: float = 0.0,
        force_match: bool = True,
    ) -> None:
        super().__init__()
        if not (
            isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 1
        ):
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        for name, value, ok, expected in (
            ("alpha", alpha, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
            ("gamma", gamma, lambda v: v >= 0.0, ">= 0"),
            ("huber_delta", huber_delta, lambda v: v > 0.0, "> 0"),
            ("box_weight", box_weight, lambda v: v >= 0.0, ">= 0"),
            ("label_smoothing", label_smoothing, lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
        ):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and ok(value)):
                raise ValueError(f"{name}: expected a number {expected}, got {value!r}")
        _check_thresholds(match_iou, unmatch_iou)
        self.num_classes = num_classes
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.huber_delta = float(huber_delta)
        self.box_weight = float(box_weight)
        self.match_iou = float(match_iou)
        self.unmatch_iou = float(unmatch_iou)
        self.label_smoothing = float(label_smoothing)
        self.force_match = bool(force_match)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, alpha={self.alpha}, gamma={self.gamma}, "
            f"huber_delta={self.huber_delta}, box_weight={self.box_weight}, "
            f"match_iou={self.match_iou}, unmatch_iou={self.unmatch_iou}, "
            f"label_smoothing={self.label_smoothing}, force_match={self.force_match}"
        )

    def forward(
        self,
        cls_outputs: Tensor,
        box_outputs: Tensor,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
    ) -> dict[str, Tensor]:
        """Compute the loss of one batch.

        Args:
            cls_outputs (Tensor[B, N, C]): class logits in anchor order
                (:func:`effscale.detector.anchors.flatten_outputs`), any float dtype.
            box_outputs (Tensor[B, N, 4]): ``(dy, dx, dh, dw)`` regressions, any float dtype.
            anchors (Tensor[N, 4]): ``(x1, y1, x2, y2)`` anchors in input pixels.
            gt_boxes (Tensor[B, M, 4]): ``(x1, y1, x2, y2)`` boxes in input pixels; padding
                rows may hold anything.
            gt_labels (Tensor[B, M] int64): class in ``[0, C)``, ``-1`` for padding rows.
                Labels are not range-checked (that would need a host sync); a label ``>= C``
                makes its positives count as background for every class.

        Returns:
            dict[str, Tensor]: float32 scalars ``loss`` (``cls_loss + box_weight *
            box_loss``), ``cls_loss``, ``box_loss`` and ``num_positives`` (positive anchors
            summed over the batch, before the ``+ 1``).
        """
        batch, num_anchors, _ = check_flat_outputs(
            cls_outputs, box_outputs, anchors, num_classes=self.num_classes
        )
        if not isinstance(gt_boxes, Tensor) or gt_boxes.dim() != 3 or gt_boxes.shape[0] != batch:
            raise ValueError(
                f"gt_boxes: expected shape [{batch}, M, 4] (B, M, 4), got {_describe(gt_boxes)}"
            )
        targets = assign_targets(
            anchors,
            gt_boxes,
            gt_labels,
            match_iou=self.match_iou,
            unmatch_iou=self.unmatch_iou,
            force_match=self.force_match,
        )
        num_positives = targets.num_positives.sum()
        normalizer = num_positives + 1.0

        labels = targets.labels
        classes = torch.arange(self.num_classes, device=labels.device)
        one_hot = labels[..., None] == classes  # [B, N, C]; negatives/ignored: all False
        cls_elem = focal_loss(
            cls_outputs,
            one_hot,
            alpha=self.alpha,
            gamma=self.gamma,
            label_smoothing=self.label_smoothing,
        )
        cls_elem = torch.where((labels != -2)[..., None], cls_elem, 0.0)
        cls_loss = cls_elem.sum() / normalizer

        positive = (labels >= 0)[..., None]
        box_elem = _huber(box_outputs.float() - targets.box_targets, self.huber_delta)
        box_elem = torch.where(positive, box_elem, 0.0)
        box_loss = box_elem.sum() / (4.0 * normalizer)

        return {
            "loss": cls_loss + self.box_weight * box_loss,
            "cls_loss": cls_loss,
            "box_loss": box_loss,
            "num_positives": num_positives,
        }
