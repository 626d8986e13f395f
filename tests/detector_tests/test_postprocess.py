"""Detection decoding: top-k, decode, clip, NMS, per-image limits."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from effscale.detector.anchors import generate_anchors
from effscale.detector.box_coding import encode
from effscale.detector.config import AnchorConfig
from effscale.detector.postprocess import PostprocessConfig, decode_detections

SIZE = (128, 96)  # H, W
NUM_CLASSES = 4
LOW = -12.0  # sigmoid(-12) = 6e-6: never above any threshold


@pytest.fixture(scope="module")
def anchors() -> torch.Tensor:
    return generate_anchors(AnchorConfig(), SIZE)


def _outputs(anchors, batch=2):
    n = anchors.shape[0]
    return torch.full((batch, n, NUM_CLASSES), LOW), torch.zeros(batch, n, 4)


def _index(anchors, box):
    """Index of the anchor equal to ``box``."""
    hits = torch.nonzero((anchors - torch.tensor(box)).abs().amax(1) < 1e-4).squeeze(1)
    assert hits.numel() == 1
    return int(hits[0])


def test_config_defaults_and_validation():
    config = PostprocessConfig()
    assert (
        config.score_threshold,
        config.iou_threshold,
        config.max_candidates,
        config.max_detections,
    ) == (0.05, 0.5, 5000, 100)
    coco = PostprocessConfig.for_coco_eval(max_detections=50)
    assert coco.score_threshold == 0.001 and coco.max_detections == 50
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.iou_threshold = 0.6
    for field, value in (
        ("score_threshold", 1.5),
        ("iou_threshold", -0.1),
        ("max_candidates", 0),
        ("max_detections", 2.0),
    ):
        with pytest.raises(ValueError, match=field):
            PostprocessConfig(**{field: value})


def test_anchor_boxes_come_back_with_labels(anchors):
    cls, box = _outputs(anchors)
    # Image 0: two well-separated level-4 anchors (stride 16, ratio 1:1 -> 64 x 64).
    a = _index(anchors, [8.0, 8.0, 72.0, 72.0])  # centre (40, 40)
    b = _index(anchors, [-24.0, 56.0, 40.0, 120.0])  # centre (8, 88)
    cls[0, a, 2] = 4.0
    cls[0, b, 0] = 2.0
    # Image 1: one anchor, with a regression of +0.25 anchor width in x.
    c = _index(anchors, [-12.0, -12.0, 20.0, 20.0])  # level 3, centre (4, 4)
    cls[1, c, 3] = 3.0
    box[1, c] = torch.tensor([0.0, 0.25, 0.0, 0.0])
    out = decode_detections(cls, box, anchors, config=PostprocessConfig(), image_size=SIZE)
    assert len(out) == 2
    assert set(out[0]) == {"boxes", "scores", "labels"}
    torch.testing.assert_close(
        out[0]["boxes"], torch.tensor([[8.0, 8.0, 72.0, 72.0], [0.0, 56.0, 40.0, 120.0]])
    )  # clipped
    torch.testing.assert_close(out[0]["scores"], torch.sigmoid(torch.tensor([4.0, 2.0])))
    assert out[0]["labels"].tolist() == [2, 0] and out[0]["labels"].dtype == torch.int64
    torch.testing.assert_close(out[1]["boxes"], torch.tensor([[0.0, 0.0, 28.0, 20.0]]))
    assert out[1]["labels"].tolist() == [3]


def test_duplicates_are_suppressed_per_class_and_image(anchors):
    cls, box = _outputs(anchors)
    # Scale-0 and scale-1 square anchors at one location: IoU 2**(-2/3) = 0.63 > 0.5.
    small = _index(anchors, [8.0, 8.0, 72.0, 72.0])
    large = small + 3
    torch.testing.assert_close(
        (anchors[large, 2] - anchors[large, 0]) / 64, torch.tensor(2 ** (1 / 3))
    )
    # The box regression of a third anchor lands exactly on the small anchor's box.
    other = small + 1  # ratio (1.4, 0.7) at the same location
    box[0, other] = encode(anchors[small], anchors[other])
    cls[0, small, 1] = 3.0
    cls[0, large, 1] = 2.0
    cls[0, other, 1] = 1.0
    cls[0, large, 2] = 0.5  # another class on the same box: not suppressed
    cls[1, large, 1] = 1.5  # another image: not suppressed
    out = decode_detections(cls, box, anchors, config=PostprocessConfig(), image_size=SIZE)
    assert out[0]["labels"].tolist() == [1, 2]
    torch.testing.assert_close(out[0]["scores"], torch.sigmoid(torch.tensor([3.0, 0.5])))
    torch.testing.assert_close(out[0]["boxes"][0], anchors[small])
    assert out[1]["labels"].tolist() == [1]
    # Raising the IoU threshold above 0.63 keeps the larger duplicate too (not the third: IoU 1).
    loose = decode_detections(
        cls, box, anchors, config=PostprocessConfig(iou_threshold=0.7), image_size=SIZE
    )
    assert loose[0]["labels"].tolist() == [1, 1, 2]


def test_thresholds_and_limits(anchors):
    cls, box = _outputs(anchors, batch=3)
    # Image 0: 30 separate level-3 anchors (one per location, stride 8) of descending scores.
    idx = torch.arange(30) * 9 * 3  # every third location in the top rows
    logits = torch.linspace(5.0, -1.0, 30)
    cls[0, idx, 0] = logits
    out = decode_detections(
        cls, box, anchors, image_size=SIZE, config=PostprocessConfig(iou_threshold=0.99)
    )
    kept = int((torch.sigmoid(logits) >= 0.05).sum())
    assert len(out[0]["scores"]) == kept == 30  # sigmoid(-1) = 0.27
    assert torch.all(out[0]["scores"][:-1] >= out[0]["scores"][1:])
    assert [len(o["scores"]) for o in out[1:]] == [0, 0]
    assert out[1]["boxes"].shape == (0, 4)
    limited = decode_detections(
        cls,
        box,
        anchors,
        image_size=SIZE,
        config=PostprocessConfig(iou_threshold=0.99, max_detections=7),
    )
    torch.testing.assert_close(limited[0]["scores"], torch.sigmoid(logits[:7]))
    few = decode_detections(
        cls,
        box,
        anchors,
        image_size=SIZE,
        config=PostprocessConfig(iou_threshold=0.99, max_candidates=5),
    )
    torch.testing.assert_close(few[0]["scores"], torch.sigmoid(logits[:5]))
    strict = decode_detections(
        cls,
        box,
        anchors,
        image_size=SIZE,
        config=PostprocessConfig(iou_threshold=0.99, score_threshold=0.9),
    )
    torch.testing.assert_close(strict[0]["scores"], torch.sigmoid(logits[logits >= 2.1972246]))
    # COCO setting keeps low scores (sigmoid(LOW) is below even 0.001).
    coco = decode_detections(
        cls,
        box,
        anchors,
        image_size=SIZE,
        config=PostprocessConfig.for_coco_eval(iou_threshold=0.99),
    )
    assert len(coco[0]["scores"]) == 30


def test_many_images_and_classes_stay_separate(anchors):
    """The batched NMS offsets must keep every (image, class) group independent."""
    batch = 6
    cls, box = _outputs(anchors, batch=batch)
    a = _index(anchors, [8.0, 8.0, 72.0, 72.0])
    for image in range(batch):
        for label in range(NUM_CLASSES):
            cls[image, a, label] = 1.0 + image + label / 10
            cls[image, a + 3, label] = 0.5 + image + label / 10  # duplicate, suppressed
    out = decode_detections(cls, box, anchors, config=PostprocessConfig(), image_size=SIZE)
    for image, det in enumerate(out):
        assert det["labels"].tolist() == [3, 2, 1, 0]
        torch.testing.assert_close(det["boxes"], anchors[a].expand(4, 4))
        torch.testing.assert_close(
            det["scores"], torch.sigmoid(1.0 + image + torch.tensor([0.3, 0.2, 0.1, 0.0]))
        )


def test_bf16_inputs_and_errors(anchors):
    cls, box = _outputs(anchors)
    a = _index(anchors, [8.0, 8.0, 72.0, 72.0])
    cls[0, a, 1] = 3.0
    out = decode_detections(cls.bfloat16(), box.bfloat16(), anchors, image_size=SIZE)
    assert out[0]["boxes"].dtype == torch.float32 and out[0]["labels"].tolist() == [1]
    with pytest.raises(ValueError, match=r"box_outputs: expected shape \[2, 2313, 4\]"):
        decode_detections(cls, box[..., :3], anchors, image_size=SIZE)
    with pytest.raises(ValueError, match=r"anchors: expected shape \[2313, 4\]"):
        decode_detections(cls, box, anchors[1:], image_size=SIZE)
    with pytest.raises(ValueError, match=r"cls_outputs: expected shape \[B, N, C\]"):
        decode_detections(cls[0], box, anchors, image_size=SIZE)
    with pytest.raises(ValueError, match="image_size"):
        decode_detections(cls, box, anchors, image_size=(128,))
    with pytest.raises(ValueError, match="config"):
        decode_detections(cls, box, anchors, config={"iou_threshold": 0.5}, image_size=SIZE)
    with pytest.raises(TypeError):
        decode_detections(cls, box, anchors, PostprocessConfig(), SIZE)  # keyword-only
