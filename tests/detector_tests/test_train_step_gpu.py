"""The CUDA paths of the fast training step: skipped without a CUDA device (CI has none); run
them first in a GPU session (``python -m pytest -q -m gpu``)."""

import math

import pytest
import torch

from effscale.detector.anchors import cached_anchors
from effscale.detector.config import from_scaling
from effscale.detector.data import DeviceAugment, DeviceCache, load_split, make_synthetic_coco
from effscale.detector.loss import DetectionLoss
from effscale.detector.model import build_model
from effscale.detector.scaling import PAPER_SPEC
from effscale.detector.train import DataSettings, TrainSettings, train_proxy
from effscale.detector.train_step import (
    GRAPH_WARMUP_STEPS,
    LossMonitor,
    StepOptions,
    TrainStep,
    make_optimizer,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

NUM_CLASSES = 4
SIZE = 128


def _config():
    return from_scaling(PAPER_SPEC, -2, num_classes=NUM_CLASSES, image_size=(SIZE, SIZE))


def _batches(count, batch=4, objects=5):
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        images = torch.randn(batch, 3, SIZE, SIZE, generator=generator)
        xy = torch.rand(batch, objects, 2, generator=generator) * SIZE * 0.6
        wh = torch.rand(batch, objects, 2, generator=generator) * SIZE * 0.3 + 8
        boxes = torch.cat([xy, (xy + wh).clamp(max=SIZE)], dim=-1)
        labels = torch.randint(0, NUM_CLASSES, (batch, objects), generator=generator)
        out.append((images.cuda(), boxes.cuda(), labels.cuda()))
    return out


def _step(cuda_graph: bool, dtype=None):
    torch.manual_seed(0)
    config = _config()
    device = torch.device("cuda")
    model = build_model(config).to(device).train()
    options = StepOptions(cuda_graph=cuda_graph, fused_optimizer=True).resolve(device)
    optimizer = make_optimizer(model, name="sgd", lr=0.01, fused=True)
    anchors = cached_anchors(
        config.anchors, config.image_size, config.min_level, config.max_level, device=device
    )
    step = TrainStep(
        model=model,
        criterion=DetectionLoss(num_classes=NUM_CLASSES),
        optimizer=optimizer,
        anchors=anchors,
        num_classes=NUM_CLASSES,
        grad_clip=10.0,
        autocast_dtype=dtype,
        options=options,
        max_objects=8,
    )
    return step, model


def test_cuda_graph_step_matches_the_eager_step_in_float32():
    batches = _batches(GRAPH_WARMUP_STEPS + 4)
    eager, eager_model = _step(cuda_graph=False)
    graphed, graphed_model = _step(cuda_graph=True)
    eager_losses = [float(eager(*b)) for b in batches]
    graphed_losses = [float(graphed(*b)) for b in batches]
    assert graphed.levers["cuda_graph"].startswith("on: captured")
    assert graphed_losses == pytest.approx(eager_losses, rel=1e-3)
    for a, b in zip(eager_model.parameters(), graphed_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_steady_state_graph_step_never_syncs_with_the_host():
    step, _ = _step(cuda_graph=True, dtype=torch.bfloat16)
    monitor = LossMonitor(check_every=50, device=torch.device("cuda"))
    batches = _batches(GRAPH_WARMUP_STEPS + 4)
    for i, batch in enumerate(batches[: GRAPH_WARMUP_STEPS + 1]):
        monitor.record(i, step(*batch))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, batch in enumerate(batches[GRAPH_WARMUP_STEPS + 1 :]):
            monitor.record(100 + i, step(*batch))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(monitor.flush())


def test_device_cache_batches_never_sync(tmp_path):
    make_synthetic_coco(tmp_path / "d", n_train=16, n_val=4, seed=0, image_size=(SIZE, SIZE))
    cache = DeviceCache.from_dataset(
        load_split(tmp_path / "d", "train"), size=(SIZE, SIZE), device="cuda", quiet=True
    )
    generator = torch.Generator(device="cuda").manual_seed(0)
    index = torch.arange(8, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        images, boxes, labels = cache.batch(index, augment=DeviceAugment(), generator=generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert images.is_cuda and images.shape == (8, 3, SIZE, SIZE)
    assert boxes.shape[1] == labels.shape[1] == cache.max_objects


def test_fast_training_path_runs_end_to_end_on_cuda(tmp_path):
    make_synthetic_coco(tmp_path / "d", n_train=32, n_val=8, seed=0, image_size=(SIZE, SIZE))
    result = train_proxy(
        _config(),
        data=DataSettings(dir=tmp_path / "d"),
        settings=TrainSettings(steps=12, batch_size=4, eval_every_epoch=False),
        device="cuda",
        quiet=True,
    )
    assert result.levers["cuda_graph"].startswith("on: captured")
    assert result.levers["data"].startswith("device cache")
    assert result.levers["optimizer"] == "fused" and result.steps == 12
    assert all(math.isfinite(v) for v in result.metrics.values())
