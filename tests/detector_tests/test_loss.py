"""Target assignment and the detection loss, including an effdet 0.4.1 oracle."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from effscale.detector.anchors import feature_sizes, flatten_outputs, generate_anchors
from effscale.detector.box_coding import encode
from effscale.detector.config import AnchorConfig
from effscale.detector.loss import (
    AnchorTargets,
    DetectionLoss,
    assign_targets,
    focal_loss,
    pairwise_iou,
)

SIZE = (128, 96)  # H, W: 9 * (16*12 + 8*6 + 4*3 + 2*2 + 1*1) = 2313 anchors
NUM_CLASSES = 5


@pytest.fixture(scope="module")
def anchors() -> torch.Tensor:
    return generate_anchors(AnchorConfig(), SIZE)


def _random_case(seed: int, batch: int = 3, max_boxes: int = 8):
    """Random per-level outputs and GT boxes (float centres, so no target is exactly 0)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = feature_sizes(SIZE, 3, 7)
    cls_levels = [torch.randn(batch, 9 * NUM_CLASSES, h, w, generator=gen) * 2 for h, w in sizes]
    box_levels = [torch.randn(batch, 9 * 4, h, w, generator=gen) * 0.3 for h, w in sizes]
    centre = torch.rand(batch, max_boxes, 2, generator=gen) * torch.tensor([SIZE[1], SIZE[0]])
    side = torch.rand(batch, max_boxes, 2, generator=gen) * 60 + 4
    boxes = torch.cat([centre - side / 2, centre + side / 2], -1)
    labels = torch.randint(0, NUM_CLASSES, (batch, max_boxes), generator=gen)
    return cls_levels, box_levels, boxes, labels


def _effdet_loss(
    anchors, cls_levels, box_levels, boxes, labels, *, unmatch_iou, label_smoothing=0.0
):
    """effdet's AnchorLabeler (with the given unmatched threshold) + effdet.loss.loss_fn."""
    pytest.importorskip("effdet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from effdet.anchors import AnchorLabeler
        from effdet.anchors import Anchors as EffdetAnchors
        from effdet.loss import loss_fn
        from effdet.object_detection import ArgMaxMatcher, BoxList

    cfg = AnchorConfig()
    eff_anchors = EffdetAnchors(
        3, 7, cfg.num_scales, list(cfg.aspect_ratios), cfg.anchor_scale, SIZE
    )
    assert torch.equal(eff_anchors.boxes[:, [1, 0, 3, 2]], anchors)
    labeler = AnchorLabeler(eff_anchors, NUM_CLASSES, match_threshold=0.5)
    labeler.target_assigner._matcher = ArgMaxMatcher(
        0.5,
        unmatched_threshold=unmatch_iou,
        negatives_lower_than_unmatched=True,
        force_match_for_each_row=True,
    )
    sizes = feature_sizes(SIZE, 3, 7)
    cls_targets = [[] for _ in sizes]
    box_targets = [[] for _ in sizes]
    num_pos = []
    for i in range(boxes.shape[0]):
        valid = labels[i] >= 0
        cls_t, box_t, match = labeler.target_assigner.assign(
            BoxList(eff_anchors.boxes),
            BoxList(boxes[i][valid][:, [1, 0, 3, 2]]),
            labels[i][valid] + 1,
        )
        cls_t = (cls_t - 1).long()
        # effdet gives ignored anchors the background target; the official loss masks -2.
        cls_t = torch.where(match.match_results == -2, -2, cls_t)
        start = 0
        for level, (h, w) in enumerate(sizes):
            count = h * w * 9
            cls_targets[level].append(cls_t[start : start + count].reshape(h, w, 9))
            box_targets[level].append(box_t[start : start + count].reshape(h, w, 36))
            start += count
        num_pos.append((match.match_results > -1).float().sum())
    total, cls_loss, box_loss = loss_fn(
        cls_levels,
        box_levels,
        [torch.stack(t) for t in cls_targets],
        [torch.stack(t) for t in box_targets],
        torch.stack(num_pos),
        num_classes=NUM_CLASSES,
        alpha=0.25,
        gamma=1.5,
        delta=0.1,
        box_loss_weight=50.0,
        label_smoothing=label_smoothing,
    )
    return total, cls_loss, box_loss, torch.stack(num_pos).sum()


# ---------------------------------------------------------------------------- effdet oracle


@pytest.mark.parametrize(
    "seed, unmatch_iou, label_smoothing",
    [(0, 0.5, 0.0), (1, 0.4, 0.0), (2, 0.4, 0.1), (3, 0.5, 0.0)],
)
def test_loss_matches_effdet(anchors, seed, unmatch_iou, label_smoothing):
    cls_levels, box_levels, boxes, labels = _random_case(seed)
    labels[0, 5:] = -1  # padding rows, with garbage coordinates
    boxes[0, 6] = float("nan")
    labels[2, :] = -1  # an image without boxes
    if seed == 3:  # no boxes at all in the batch
        labels[:] = -1
    cls, box = flatten_outputs(cls_levels, box_levels, NUM_CLASSES)
    ours = DetectionLoss(
        num_classes=NUM_CLASSES, unmatch_iou=unmatch_iou, label_smoothing=label_smoothing
    )(cls, box, anchors, boxes, labels)
    total, cls_loss, box_loss, num_pos = _effdet_loss(
        anchors,
        cls_levels,
        box_levels,
        boxes,
        labels,
        unmatch_iou=unmatch_iou,
        label_smoothing=label_smoothing,
    )
    assert ours["num_positives"].item() == num_pos.item()
    if seed != 3:
        assert num_pos.item() > 20
    torch.testing.assert_close(ours["cls_loss"], cls_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(ours["box_loss"], box_loss.float(), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(ours["loss"], total, rtol=1e-5, atol=0)


def test_assignment_matches_effdet_matcher(anchors):
    pytest.importorskip("effdet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from effdet.object_detection import (
            ArgMaxMatcher,
            BoxList,
            FasterRcnnBoxCoder,
            IouSimilarity,
            TargetAssigner,
        )
    assigner = TargetAssigner(
        IouSimilarity(), ArgMaxMatcher(0.5, 0.4, True, True), FasterRcnnBoxCoder()
    )
    _, _, boxes, labels = _random_case(7, batch=2, max_boxes=12)
    labels[1, ::3] = -1
    ours = assign_targets(anchors, boxes, labels)
    for i in range(2):
        valid = torch.nonzero(labels[i] >= 0).squeeze(1)
        cls_t, box_t, match = assigner.assign(
            BoxList(anchors[:, [1, 0, 3, 2]]),
            BoxList(boxes[i, valid][:, [1, 0, 3, 2]]),
            labels[i, valid],
        )
        theirs = match.match_results
        theirs = torch.where(theirs >= 0, valid[theirs.clamp(min=0)], theirs)  # back to padded rows
        assert torch.equal(ours.matched_gt[i], theirs)
        assert (theirs == -2).sum() > 0 and (theirs >= 0).sum() > 0
        pos = theirs >= 0
        assert torch.equal(ours.labels[i][pos], cls_t[pos].long())
        torch.testing.assert_close(ours.box_targets[i], box_t, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- assignment by hand


def test_assign_targets_by_hand():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [5.0, 0.0, 15.0, 10.0],  # IoU 1/3 with anchor 0
            [100.0, 100.0, 110.0, 110.0],
            [0.0, 0.0, 10.0, 12.0],
            [50.0, 50.0, 60.0, 60.0],
        ]
    )
    boxes = torch.tensor(
        [
            [
                [0.0, 0.0, 10.0, 11.0],  # IoU 10/11 with a0, 10/12 with a3, 5/15 with a1
                [99.0, 99.0, 101.0, 101.0],  # tiny: best IoU 1/103 with a2 -> force matched
                [7.0, 7.0, 8.0, 8.0],  # padding
            ]
        ]
    )
    labels = torch.tensor([[3, 1, -1]])
    t = assign_targets(anchors, boxes, labels, match_iou=0.5, unmatch_iou=0.3)
    assert isinstance(t, AnchorTargets)
    assert t.matched_gt.tolist() == [[0, -2, 1, 0, -1]]
    assert t.labels.tolist() == [[3, -2, 1, 3, -1]]
    assert t.num_positives.tolist() == [3.0]
    torch.testing.assert_close(t.box_targets[0, 0], torch.tensor([0.05, 0.0, math.log(1.1), 0.0]))
    torch.testing.assert_close(
        t.box_targets[0, 2], torch.tensor([-0.5, -0.5, math.log(0.2), math.log(0.2)])
    )
    torch.testing.assert_close(t.box_targets[0, 3], encode(boxes[0, 0], anchors[3]))
    assert torch.equal(t.box_targets[0, [1, 4]], torch.zeros(2, 4))
    # Without force matching the tiny box gets nothing; with unmatch 0.5 nothing is ignored.
    t = assign_targets(anchors, boxes, labels, unmatch_iou=0.5, force_match=False)
    assert t.labels.tolist() == [[3, -1, -1, 3, -1]]


def test_force_match_conflict_lowest_row_wins_and_overrides_argmax():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    # Both boxes' best anchor is a0 (IoU 0.04 and 0.01): row 0 wins the force match.
    boxes = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]]])
    t = assign_targets(anchors, boxes, torch.tensor([[2, 4]]))
    assert t.labels.tolist() == [[2, -1]]
    # Force match overrides a better-IoU positive: a0 is 0.81 with box 1, but it is box 0's
    # only overlapping anchor.
    boxes = torch.tensor([[[9.0, 9.0, 12.0, 12.0], [0.0, 0.0, 9.0, 9.0]]])
    t = assign_targets(anchors, boxes, torch.tensor([[2, 4]]))
    assert t.matched_gt.tolist() == [[0, -1]]


def test_degenerate_boxes_are_padding():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    boxes = torch.tensor([[[5.0, 5.0, 5.0, 9.0], [25.0, 25.0, 20.0, 30.0]]])
    t = assign_targets(anchors, boxes, torch.tensor([[0, 1]]))
    assert t.labels.tolist() == [[-1, -1]]
    assert torch.isfinite(t.box_targets).all()


def test_chunked_iou_gives_identical_targets(anchors):
    _, _, boxes, labels = _random_case(4, batch=2, max_boxes=16)
    labels[0, 3] = -1
    full = assign_targets(anchors, boxes, labels)
    for chunk_elements in (1, 2 * anchors.shape[0] * 3, 10**9):
        part = assign_targets(anchors, boxes, labels, chunk_elements=chunk_elements)
        for a, b in zip(full, part):
            assert torch.equal(a, b)


def test_pairwise_iou_matches_torchvision():
    torchvision = pytest.importorskip("torchvision")
    gen = torch.Generator().manual_seed(5)
    xy = torch.rand(2, 7, 2, generator=gen) * 50
    boxes = torch.cat([xy, xy + torch.rand(2, 7, 2, generator=gen) * 30 + 1], -1)
    anchors = generate_anchors(AnchorConfig(), (64, 64))
    iou = pairwise_iou(boxes, anchors)
    assert iou.shape == (2, 7, anchors.shape[0])
    for i in range(2):
        torch.testing.assert_close(iou[i], torchvision.ops.box_iou(boxes[i], anchors))


# ---------------------------------------------------------------------------- loss behaviour


def _loss_inputs(anchors, seed=0):
    cls_levels, box_levels, boxes, labels = _random_case(seed, batch=2, max_boxes=4)
    cls, box = flatten_outputs(cls_levels, box_levels, NUM_CLASSES)
    return cls, box, boxes, labels


def test_focal_loss_known_values():
    logits = torch.tensor([0.0, 0.0, 2.0, -3.0])
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0])
    got = focal_loss(logits, targets, alpha=0.25, gamma=1.5)
    p = torch.sigmoid(logits)
    expected = torch.tensor(
        [
            0.25 * 0.5**1.5 * math.log(2.0),
            0.75 * 0.5**1.5 * math.log(2.0),
            float(0.25 * (1 - p[2]) ** 1.5 * -torch.log(p[2])),
            float(0.75 * p[3] ** 1.5 * -torch.log(1 - p[3])),
        ]
    )
    torch.testing.assert_close(got, expected)
    # Extreme logits: finite values and gradients.
    x = torch.tensor([-200.0, 200.0, 0.0], requires_grad=True)
    value = focal_loss(x, torch.tensor([1.0, 0.0, 1.0]), gamma=0.5).sum()
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


def test_loss_is_finite_and_has_gradients(anchors):
    cls, box, boxes, labels = _loss_inputs(anchors)
    cls.requires_grad_(True)
    box.requires_grad_(True)
    out = DetectionLoss(num_classes=NUM_CLASSES)(cls, box, anchors, boxes, labels)
    assert set(out) == {"loss", "cls_loss", "box_loss", "num_positives"}
    for value in out.values():
        assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value)
    torch.testing.assert_close(out["loss"], out["cls_loss"] + 50.0 * out["box_loss"])
    out["loss"].backward()
    assert torch.isfinite(cls.grad).all() and torch.isfinite(box.grad).all()
    assert cls.grad.abs().sum() > 0 and box.grad.abs().sum() > 0


def test_box_loss_zero_when_predictions_equal_targets(anchors):
    cls, box, boxes, labels = _loss_inputs(anchors)
    loss = DetectionLoss(num_classes=NUM_CLASSES)
    targets = assign_targets(anchors, boxes, labels)
    # Non-positive anchors' predictions must not matter.
    perfect = torch.where(
        (targets.labels >= 0)[..., None], targets.box_targets, torch.randn_like(box) * 5
    )
    out = loss(cls, perfect, anchors, boxes, labels)
    assert out["box_loss"].item() == 0.0
    assert out["num_positives"].item() == targets.num_positives.sum().item() > 0
    # One coordinate of one positive off by 0.05 (quadratic zone) and one by 1.0 (linear zone).
    pos = torch.nonzero(targets.labels >= 0)
    shifted = perfect.clone()
    shifted[pos[0][0], pos[0][1], 2] += 0.05
    shifted[pos[1][0], pos[1][1], 0] -= 1.0
    expected = (0.5 * 0.05**2 + 0.1 * (1.0 - 0.05)) / (4 * (out["num_positives"].item() + 1))
    torch.testing.assert_close(
        loss(cls, shifted, anchors, boxes, labels)["box_loss"],
        torch.tensor(expected),
        rtol=1e-4,
        atol=0,
    )


def test_cls_loss_decreases_toward_targets(anchors):
    cls, box, boxes, labels = _loss_inputs(anchors)
    loss = DetectionLoss(num_classes=NUM_CLASSES)
    targets = assign_targets(anchors, boxes, labels, unmatch_iou=0.4)
    one_hot = (targets.labels[..., None] == torch.arange(NUM_CLASSES)).float()
    direction = one_hot * 2 - 1  # raise logits of true classes, lower the rest
    values = [
        loss(cls + step * direction, box, anchors, boxes, labels)["cls_loss"].item()
        for step in (0.0, 1.0, 2.0, 4.0, 8.0)
    ]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] < 0.01 * values[0]


def test_ignored_anchors_get_no_cls_loss(anchors):
    cls, box, boxes, labels = _loss_inputs(anchors)
    loss = DetectionLoss(num_classes=NUM_CLASSES, unmatch_iou=0.4)
    targets = assign_targets(anchors, boxes, labels, unmatch_iou=0.4)
    ignored = targets.labels == -2
    assert ignored.sum() > 0
    changed = torch.where(ignored[..., None], torch.randn_like(cls) * 10, cls)
    torch.testing.assert_close(
        loss(changed, box, anchors, boxes, labels)["cls_loss"],
        loss(cls, box, anchors, boxes, labels)["cls_loss"],
    )


def test_image_without_boxes_and_empty_batch(anchors):
    cls, box, boxes, labels = _loss_inputs(anchors)
    loss = DetectionLoss(num_classes=NUM_CLASSES)
    labels[1] = -1
    out = loss(cls, box, anchors, boxes, labels)
    # Image 1 contributes only background focal loss, normalized by the batch's positives.
    alone = loss(cls[:1], box[:1], anchors, boxes[:1], labels[:1])
    assert out["num_positives"] == alone["num_positives"] > 0
    background = focal_loss(cls[1], torch.zeros_like(cls[1])).sum() / (out["num_positives"] + 1)
    torch.testing.assert_close(out["cls_loss"], alone["cls_loss"] + background)
    torch.testing.assert_close(out["box_loss"], alone["box_loss"])
    # No boxes at all, with M = 0 or with only padding rows: normalizer 1.
    for gt_boxes, gt_labels in (
        (torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64)),
        (torch.full((2, 8, 4), float("nan")), torch.full((2, 8), -1)),
    ):
        empty = loss(cls, box, anchors, gt_boxes, gt_labels)
        assert empty["num_positives"].item() == 0.0 and empty["box_loss"].item() == 0.0
        torch.testing.assert_close(empty["cls_loss"], focal_loss(cls, torch.zeros_like(cls)).sum())


def test_padding_rows_do_not_change_the_loss(anchors):
    cls, box, boxes, labels = _loss_inputs(anchors)
    loss = DetectionLoss(num_classes=NUM_CLASSES)
    reference = loss(cls, box, anchors, boxes, labels)
    # Interleave padding rows with garbage (NaN, inf, huge boxes, valid-looking boxes).
    garbage = torch.tensor(
        [
            [float("nan")] * 4,
            [0.0, 0.0, 1e9, 1e9],
            [-5.0, float("inf"), 3.0, 4.0],
            list(map(float, boxes[0, 0])),
        ]
    )
    padded_boxes = torch.cat(
        [garbage[None].expand(2, -1, -1), boxes, garbage[None].expand(2, -1, -1)], 1
    )
    padded_labels = torch.cat([torch.full((2, 4), -1), labels, torch.full((2, 4), -1)], 1)
    padded = loss(cls, box, anchors, padded_boxes, padded_labels)
    for key in reference:
        torch.testing.assert_close(padded[key], reference[key])


def test_bf16_outputs_compute_in_float32(anchors):
    cls, box, boxes, labels = _loss_inputs(anchors)
    loss = DetectionLoss(num_classes=NUM_CLASSES)
    low = loss(cls.bfloat16(), box.bfloat16(), anchors, boxes, labels)
    high = loss(cls.bfloat16().float(), box.bfloat16().float(), anchors, boxes, labels)
    for key in high:
        assert low[key].dtype == torch.float32
        torch.testing.assert_close(low[key], high[key])


def test_loss_traces_without_graph_breaks(anchors):
    cls, box, boxes, labels = _loss_inputs(anchors)
    loss = DetectionLoss(num_classes=NUM_CLASSES)
    compiled = torch.compile(loss, backend="eager", fullgraph=True, dynamic=False)
    got = compiled(cls, box, anchors, boxes, labels)
    expected = loss(cls, box, anchors, boxes, labels)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


def test_constructor_and_input_errors(anchors):
    with pytest.raises(TypeError):
        DetectionLoss(NUM_CLASSES)  # keyword-only
    with pytest.raises(ValueError, match="num_classes"):
        DetectionLoss(num_classes=0)
    with pytest.raises(ValueError, match="gamma"):
        DetectionLoss(num_classes=3, gamma=-1.0)
    with pytest.raises(ValueError, match="unmatch_iou"):
        DetectionLoss(num_classes=3, match_iou=0.4, unmatch_iou=0.5)
    cls, box, boxes, labels = _loss_inputs(anchors)
    loss = DetectionLoss(num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=r"cls_outputs: expected shape \[B, N, 5\]"):
        loss(cls[..., :4], box, anchors, boxes, labels)
    with pytest.raises(ValueError, match=r"box_outputs: expected shape \[2, 2313, 4\]"):
        loss(cls, box[:, :10], anchors, boxes, labels)
    with pytest.raises(ValueError, match=r"anchors: expected shape \[2313, 4\]"):
        loss(cls, box, anchors[:-1], boxes, labels)
    with pytest.raises(ValueError, match=r"gt_labels: expected shape \[2, 4\]"):
        loss(cls, box, anchors, boxes, labels[:, :3])
    with pytest.raises(ValueError, match="gt_labels: expected an integer tensor"):
        loss(cls, box, anchors, boxes, labels.float())
    with pytest.raises(ValueError, match=r"gt_boxes: expected shape \[2, M, 4\]"):
        loss(cls, box, anchors, boxes[:1], labels)
