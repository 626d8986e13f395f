"""The training step's speed levers: options, fallbacks where unsupported, exactness of the
deferred NaN check, and that the loss compiles as one graph."""

import math
import shutil
import warnings

import pytest
import torch

from effscale.detector.anchors import cached_anchors, flatten_outputs
from effscale.detector.config import from_scaling
from effscale.detector.ema import WeightEma
from effscale.detector.loss import DetectionLoss
from effscale.detector.model import build_model
from effscale.detector.scaling import PAPER_SPEC
from effscale.detector.train_step import (
    CUDA_CHECK_EVERY,
    DivergedError,
    LossMonitor,
    StepOptions,
    TrainStep,
    make_optimizer,
    pad_targets,
)
from tests.detector_tests.host_reads import HostReadRecorder

NUM_CLASSES = 4
SIZE = 64


def _config():
    return from_scaling(PAPER_SPEC, -4, num_classes=NUM_CLASSES, image_size=(SIZE, SIZE))


def _batch(seed=0, batch=2, objects=3):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, SIZE, SIZE, generator=generator)
    xy = torch.rand(batch, objects, 2, generator=generator) * SIZE * 0.6
    wh = torch.rand(batch, objects, 2, generator=generator) * SIZE * 0.3 + 6
    boxes = torch.cat([xy, (xy + wh).clamp(max=SIZE)], dim=-1)
    labels = torch.randint(0, NUM_CLASSES, (batch, objects), generator=generator)
    labels[0, -1] = -1  # one padding row
    return images, boxes, labels


def _step(options: StepOptions, *, max_objects=None, seed=0):
    torch.manual_seed(seed)
    config = _config()
    model = build_model(config).train()
    optimizer = make_optimizer(
        model, name="sgd", lr=0.01, fused=options.resolve(torch.device("cpu")).fused_optimizer
    )
    anchors = cached_anchors(config.anchors, config.image_size, config.min_level, config.max_level)
    step = TrainStep(
        model=model,
        criterion=DetectionLoss(num_classes=NUM_CLASSES),
        optimizer=optimizer,
        anchors=anchors,
        num_classes=NUM_CLASSES,
        grad_clip=10.0,
        autocast_dtype=None,
        options=options.resolve(torch.device("cpu")),
        max_objects=max_objects,
    )
    return step, model


def _run(step, steps=3):
    return [float(step(*_batch(seed=i))) for i in range(steps)]


def test_auto_options_resolve_per_device():
    cpu = StepOptions().resolve(torch.device("cpu"))
    assert (cpu.cuda_graph, cpu.fused_optimizer, cpu.check_every, cpu.compile) == (
        False,
        False,
        1,
        "off",
    )
    cuda = StepOptions().resolve(torch.device("cuda"))
    assert (cuda.cuda_graph, cuda.fused_optimizer, cuda.check_every) == (
        True,
        True,
        CUDA_CHECK_EVERY,
    )
    forced = StepOptions(cuda_graph=False, check_every=5).resolve(torch.device("cuda"))
    assert (forced.cuda_graph, forced.check_every) == (False, 5)


@pytest.mark.parametrize(
    "field, value",
    [
        ("cuda_graph", "yes"),
        ("compile", "fast"),
        ("channels_last", 1),
        ("fused_optimizer", None),
        ("check_every", 0),
    ],
)
def test_bad_option_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"train.{field}"):
        StepOptions(**{field: value})


def test_cuda_graph_falls_back_to_the_plain_step_on_cpu():
    plain, plain_model = _step(StepOptions(cuda_graph=False))
    graphed, graphed_model = _step(StepOptions(cuda_graph=True), max_objects=8)
    assert graphed.levers["cuda_graph"] == "off: needs a CUDA device"
    assert plain.levers["cuda_graph"] == "off"
    plain_losses, graphed_losses = _run(plain), _run(graphed)
    # padding to max_objects rows changes nothing: the fallback is the plain step
    assert graphed_losses == pytest.approx(plain_losses, rel=1e-5)
    for a, b in zip(plain_model.parameters(), graphed_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all(math.isfinite(v) for v in plain_losses)
    assert plain_losses[0] != plain_losses[2]  # it trains: the loss moves


def test_failed_compile_falls_back_to_eager(monkeypatch):
    """Fault injection: torch.compile gives a callable that fails as Inductor would."""
    from torch._dynamo.exc import BackendCompilerFailed

    def broken_compile(module, **kwargs):
        def run(*args, **kw):
            raise BackendCompilerFailed(
                "inductor", RuntimeError("expected predicate to be bool"), None
            )

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager, _ = _step(StepOptions())
    compiled, _ = _step(StepOptions(compile="default"))
    assert compiled.levers["compile"] == "pending"
    with pytest.warns(RuntimeWarning, match="torch.compile: compile failed"):
        first = float(compiled(*_batch(seed=0)))
    assert compiled.levers["compile"].startswith("off: compile failed (BackendCompilerFailed")
    assert first == pytest.approx(float(eager(*_batch(seed=0))), rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: the fallback is permanent
        second = float(compiled(*_batch(seed=1)))
    assert second == pytest.approx(float(eager(*_batch(seed=1))), rel=1e-5)


def test_a_miscompiled_loss_is_caught_on_the_first_step_and_training_stays_exact(monkeypatch):
    """Fault injection: a compiled model whose outputs are off, as torch 2.11's Inductor on CPU
    gets the anchor assignment's argmax wrong. The first step compares the compiled loss with
    the eager loss on the same batch, falls back, and leaves no trace: the weights and the
    BatchNorm statistics after each step equal the eager run's."""

    def off_by_some(module, **kwargs):
        if isinstance(module, DetectionLoss):
            return module

        def run(images):
            cls_levels, box_levels = module(images)
            return [c * 1.5 for c in cls_levels], box_levels

        return run

    monkeypatch.setattr(torch, "compile", off_by_some)
    eager, eager_model = _step(StepOptions())
    compiled, compiled_model = _step(StepOptions(compile="default"))
    with pytest.warns(RuntimeWarning, match="torch.compile: miscompiled"):
        first = float(compiled(*_batch(seed=0)))
    assert compiled.levers["compile"].startswith("off: miscompiled (the compiled loss ")
    assert first == pytest.approx(float(eager(*_batch(seed=0))), rel=1e-6)
    second = float(compiled(*_batch(seed=1)))
    assert second == pytest.approx(float(eager(*_batch(seed=1))), rel=1e-5)
    for a, b in zip(eager_model.state_dict().values(), compiled_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_faithful_compile_passes_the_check_and_steps_once(monkeypatch):
    """A compiled callable that computes the same loss passes the first-step check; the first
    step updates the weights once, like the eager step (the reference forward leaves BatchNorm's
    statistics as they were)."""
    monkeypatch.setattr(torch, "compile", lambda module, **kw: lambda *a, **k: module(*a, **k))
    eager, eager_model = _step(StepOptions())
    compiled, compiled_model = _step(StepOptions(compile="default"))
    losses = [float(compiled(*_batch(seed=i))) for i in range(2)]
    assert compiled.levers["compile"] == "on: mode default"
    assert losses == pytest.approx([float(eager(*_batch(seed=i))) for i in range(2)], rel=1e-5)
    for a, b in zip(eager_model.state_dict().values(), compiled_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_loss_that_is_nan_both_ways_is_divergence_not_a_miscompile(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, **kw: lambda *a, **k: module(*a, **k))
    step, _ = _step(StepOptions(compile="default"))
    images, boxes, labels = _batch()
    loss = step(torch.full_like(images, float("nan")), boxes, labels)
    assert math.isnan(float(loss))
    assert step.levers["compile"] == "on: mode default"  # LossMonitor reports the divergence


def test_an_error_of_the_model_itself_is_not_swallowed_by_the_compile_fallback(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, **kw: module)
    step, _ = _step(StepOptions(compile="default"))
    images, boxes, labels = _batch()
    with pytest.raises(ValueError, match="images: expected"):
        step(images[:, :2], boxes, labels)


def test_channels_last_gives_the_same_step():
    plain, _ = _step(StepOptions())
    nhwc, model = _step(StepOptions(channels_last=True))
    assert nhwc.levers["channels_last"] == "on"
    stem = next(p for p in model.parameters() if p.dim() == 4)
    assert stem.is_contiguous(memory_format=torch.channels_last)
    assert _run(nhwc, 2) == pytest.approx(_run(plain, 2), rel=1e-4)


def test_fused_optimizer_matches_the_default_one():
    plain, plain_model = _step(StepOptions(fused_optimizer=False))
    fused, fused_model = _step(StepOptions(fused_optimizer=True))
    assert fused.levers["optimizer"] == "fused"
    assert _run(fused) == pytest.approx(_run(plain), rel=1e-5)
    for a, b in zip(plain_model.parameters(), fused_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_loss_monitor_reports_the_exact_first_bad_step():
    monitor = LossMonitor(check_every=8, device=torch.device("cpu"))
    values = [1.0, 0.9, 0.8, float("inf"), float("nan"), 0.5]
    flushed = [monitor.record(10 + i, torch.tensor(v)) for i, v in enumerate(values)]
    assert not any(flushed)  # nothing checked yet: no host sync
    with pytest.raises(DivergedError) as info:
        monitor.flush()
    assert info.value.step == 13 and info.value.loss == float("inf")


def test_loss_monitor_checks_every_n_steps():
    monitor = LossMonitor(check_every=3, device=torch.device("cpu"))
    assert [monitor.record(i, torch.tensor(float(i))) for i in range(6)] == [
        False,
        False,
        True,
        False,
        False,
        True,
    ]
    assert monitor.last == 5.0
    monitor.record(6, torch.tensor(float("nan")))
    with pytest.raises(DivergedError, match="step 6"):
        monitor.flush()


def test_pad_targets_pads_with_background_rows_and_refuses_too_many():
    boxes, labels = torch.ones(2, 3, 4), torch.zeros(2, 3, dtype=torch.int64)
    padded_boxes, padded_labels = pad_targets(boxes, labels, 8)
    assert padded_boxes.shape == (2, 8, 4) and padded_labels.shape == (2, 8)
    assert padded_labels[:, 3:].eq(-1).all() and padded_boxes[:, 3:].eq(0).all()
    with pytest.raises(ValueError, match="max_objects >= 3"):
        pad_targets(boxes, labels, 2)


def test_loss_with_target_assignment_compiles_as_one_graph():
    """No graph break in the loss (fullgraph=True): anchor assignment has static shapes and no
    data-dependent Python, which Inductor and CUDA graphs need."""
    config = _config()
    anchors = cached_anchors(config.anchors, config.image_size, config.min_level, config.max_level)
    model = build_model(config).eval()
    images, boxes, labels = _batch()
    with torch.no_grad():
        cls, box = flatten_outputs(*model(images), NUM_CLASSES)
    criterion = DetectionLoss(num_classes=NUM_CLASSES)
    cls_a, cls_b = cls.clone().requires_grad_(), cls.clone().requires_grad_()
    eager = criterion(cls_a, box, anchors, boxes, labels)
    torch._dynamo.reset()
    compiled = torch.compile(criterion, fullgraph=True, backend="aot_eager")(
        cls_b, box, anchors, boxes, labels
    )
    for key in ("loss", "cls_loss", "box_loss", "num_positives"):
        torch.testing.assert_close(compiled[key], eager[key])
    eager["loss"].backward()
    compiled["loss"].backward()
    torch.testing.assert_close(cls_b.grad, cls_a.grad)
    assert float(eager["num_positives"]) > 0


def test_a_whole_training_step_never_reads_the_device_back():
    """Forward, loss with anchor assignment, backward, clipping, the fused optimizer, the EMA
    and the deferred NaN check read no value back and make no host tensor: on CUDA such an
    operation would break the graph capture or stall the step on the host. The CPU dispatches
    the same aten operations, so this is checked here."""
    step, model = _step(StepOptions(fused_optimizer=True), max_objects=8)
    ema = WeightEma(model, decay=0.999, use_warmup=True)
    monitor = LossMonitor(check_every=100, device=torch.device("cpu"))
    batches = [_batch(seed=i) for i in range(3)]
    monitor.record(0, step(*batches[0]))
    ema.update(model, step=1)
    with HostReadRecorder() as recorder:
        for i, batch in enumerate(batches[1:], start=1):
            monitor.record(i, step(*batch))
            ema.update(model, step=i + 1)
    assert recorder.bad == []
    assert step.levers["optimizer"] == "fused" and step.steps_run == 3
    loss = step(*batches[0])
    with HostReadRecorder() as recorder:  # the recorder does see a read-back
        float(loss)
    assert recorder.bad == ["aten._local_scalar_dense.default"]


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("clang++")),
    reason="Inductor on CPU needs a C++ compiler",
)
def test_compiled_step_with_inductor_matches_eager():
    """The real torch.compile path (Inductor, C++ on CPU): about 2 minutes of compilation on
    2 cores, then the same losses as the eager step."""
    torch._dynamo.reset()
    compiled, _ = _step(StepOptions(compile="default"))
    eager, _ = _step(StepOptions())
    compiled_losses = _run(compiled, 2)
    assert compiled_losses == pytest.approx(_run(eager, 2), rel=1e-4)
    if compiled.levers["compile"].startswith("off: miscompiled"):  # caught, and training exact
        pytest.xfail(
            f"torch {torch.__version__}'s Inductor miscompiles on this CPU (torch 2.11 "
            f"returns wrong argmax indices): {compiled.levers['compile']}"
        )
    assert compiled.levers["compile"] == "on: mode default"
