"""COCO evaluation through the real pipeline: loader → input frame → back to the image frame →
pycocotools, on a hand-made file with every quirk (non-contiguous ids, crowd, empty image,
grayscale PNG, RGB JPEG in a subfolder, float boxes)."""

import contextlib
import io
import math

import pytest
import torch

from effscale.detector.data import ResizePad, make_loader
from effscale.detector.data.coco import CocoDetection
from effscale.detector.evaluate import coco_metrics, detections_to_coco
from tests.detector_tests.data_tests.conftest import write_quirky_coco


@pytest.fixture
def dataset(tmp_path):
    images_dir, ann_file = write_quirky_coco(tmp_path / "q")
    return CocoDetection(images_dir, ann_file, transform=ResizePad((64, 96)))


def _detections_from_targets(dataset, shift=0.0):
    """The ground truth of every image, in the network-input frame, as detections."""
    loader = make_loader(dataset, batch_size=2, train=False)
    results = []
    for batch in loader:
        dets = []
        for boxes, labels in zip(batch.boxes, batch.labels):
            keep = labels >= 0
            b = boxes[keep].clone()
            b[:, [0, 2]] += shift
            dets.append({"boxes": b, "scores": torch.ones(int(keep.sum())), "labels": labels[keep]})
        results += detections_to_coco(
            dets,
            image_ids=batch.image_ids,
            scales=batch.scales,
            label_to_category_id=dataset.label_to_category_id,
        )
    return results


def _pycocotools_ap(coco, results):
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_perfect_predictions_give_ap_one(dataset):
    results = _detections_from_targets(dataset)
    # mapped back: category ids are the file's (non-contiguous), boxes the original float boxes
    by_id = {(r["image_id"], r["category_id"]): r["bbox"] for r in results}
    assert by_id[(10, 7)] == pytest.approx([4.5, 2.25, 10.0, 5.5], abs=0.02)
    assert by_id[(20, 12)] == pytest.approx([8.0, 16.0, 16.5, 8.0], abs=0.02)
    assert (10, 3) not in by_id  # the crowd region is not a training target
    metrics = coco_metrics(dataset.coco, results)
    assert metrics["ap"] == pytest.approx(1.0)
    assert metrics["ap50"] == pytest.approx(1.0)
    stats = _pycocotools_ap(dataset.coco, results)
    assert metrics["ap"] == pytest.approx(stats[0])
    assert metrics["ap75"] == pytest.approx(stats[2])


def test_shifted_boxes_lower_ap_exactly_as_pycocotools(dataset):
    perfect = coco_metrics(dataset.coco, _detections_from_targets(dataset))["ap"]
    shifted = _detections_from_targets(dataset, shift=2.0)
    metrics = coco_metrics(dataset.coco, shifted)
    assert metrics["ap"] < perfect
    assert metrics["ap"] == pytest.approx(_pycocotools_ap(dataset.coco, shifted)[0])
    far = coco_metrics(dataset.coco, _detections_from_targets(dataset, shift=40.0))
    assert far["ap"] == 0.0


def test_detection_on_crowd_region_is_not_a_false_positive(dataset):
    results = _detections_from_targets(dataset)
    crowd = {"image_id": 10, "category_id": 3, "bbox": [0.0, 0.0, 20.0, 10.0], "score": 0.9}
    assert coco_metrics(dataset.coco, results + [crowd])["ap"] == pytest.approx(1.0)
    wrong = {"image_id": 30, "category_id": 3, "bbox": [0.0, 0.0, 8.0, 8.0], "score": 0.95}
    assert coco_metrics(dataset.coco, results + [wrong])["ap"] < 1.0


def test_no_detections_give_zero_ap(dataset):
    metrics = coco_metrics(dataset.coco, [])
    assert metrics["ap"] == 0.0 and metrics["ap50"] == 0.0
    assert math.isnan(metrics["apl"])


def test_detections_of_spare_classes_are_dropped():
    """A model with more classes than the dataset trains the spare ones as background; their
    detections have no category and are left out instead of failing the evaluation."""
    detections = [
        {
            "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 2.0, 8.0, 9.0]]),
            "scores": torch.tensor([0.9, 0.8]),
            "labels": torch.tensor([1, 7]),
        }
    ]
    categories = {0: 11, 1: 12}
    kwargs = dict(
        image_ids=torch.tensor([5]),
        scales=torch.tensor([2.0]),
        label_to_category_id=categories.__getitem__,
    )
    results = detections_to_coco(detections, num_classes=2, **kwargs)
    assert results == [
        {"image_id": 5, "category_id": 12, "bbox": [0.0, 0.0, 20.0, 20.0], "score": 0.9}
    ]
    with pytest.raises(KeyError):
        detections_to_coco(detections, **kwargs)
