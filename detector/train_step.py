"""One optimizer step of detector training, with the speed levers of the GPU path.

A :class:`TrainStep` does forward (autocast), loss with target assignment, backward, gradient
clipping and the optimizer step for one batch. :class:`StepOptions` chooses how:

* ``cuda_graph``: after ``GRAPH_WARMUP_STEPS`` eager steps on a side stream, the forward, loss
  and backward are captured once in a CUDA graph and replayed for every later batch; inputs are
  copied into static buffers first. Clipping and the (fused) optimizer step run eagerly after the
  replay, so the learning rate can change every step. Needs CUDA and fixed shapes: boxes and
  labels are padded to ``max_objects`` rows so that every batch has the same shape.
* ``compile``: ``torch.compile`` of the model and of the loss with the given mode.
* ``channels_last``: the model and its inputs in NHWC memory format.
* ``fused_optimizer``: see :func:`make_optimizer`.

Every lever falls back to the plain eager path where it is unsupported (no CUDA, a compile or
capture error); :attr:`TrainStep.levers` says what is in effect and why. The plain path is the
reference: on CPU, ``StepOptions()`` gives exactly the eager step.

:class:`LossMonitor` checks the loss for NaN/inf every ``check_every`` steps instead of every
step, so the GPU is not synchronized with the host once per step; the step reported by
:class:`DivergedError` is still exact, because the losses are kept on the device until checked.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from torch import Tensor, nn

from .anchors import flatten_outputs

__all__ = [
    "COMPILE_CHECK_RTOL",
    "COMPILE_MODES",
    "GRAPH_WARMUP_STEPS",
    "StepOptions",
    "ResolvedOptions",
    "DivergedError",
    "LossMonitor",
    "TrainStep",
    "make_optimizer",
    "pad_targets",
]

#: ``StepOptions.compile`` values: "off" or a ``torch.compile`` mode
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: eager steps (on a side stream) before a CUDA graph is captured
GRAPH_WARMUP_STEPS = 3
#: ``check_every="auto"`` on CUDA: steps between NaN checks (one host sync each)
CUDA_CHECK_EVERY = 20
#: the first compiled step's loss must equal the eager loss on the same batch within this
#: relative tolerance (bf16 kernels fused differently stay far inside it; a miscompile does not)
COMPILE_CHECK_RTOL = 0.02


class DivergedError(RuntimeError):
    """The loss became NaN or infinite; ``step`` is the optimizer step (0-based) where it did."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(
            f"training diverged at step {step}: loss is {loss}; lower the learning "
            "rate or enable gradient clipping"
        )
        self.step = step
        self.loss = loss


def _auto_or_bool(value: Any) -> bool:
    return value == "auto" or isinstance(value, bool)


@dataclass(frozen=True)
class StepOptions:
    """How the training step runs. ``"auto"`` turns a lever on where it is known to pay:
    ``cuda_graph`` and ``fused_optimizer`` on CUDA, and ``check_every`` = 1 on CPU (no sync to
    save) or ``CUDA_CHECK_EVERY`` on CUDA. ``compile`` is off by default: it costs minutes of
    compilation per architecture, more than a proxy trial's training."""

    cuda_graph: bool | str = "auto"
    compile: str = "off"
    channels_last: bool = False
    fused_optimizer: bool | str = "auto"
    check_every: int | str = "auto"

    def __post_init__(self) -> None:
        for name in ("cuda_graph", "fused_optimizer"):
            if not _auto_or_bool(getattr(self, name)):
                raise ValueError(
                    f'train.{name}: must be true, false or "auto", got {getattr(self, name)!r}'
                )
        if self.compile not in COMPILE_MODES:
            raise ValueError(
                f"train.compile: must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}"
            )
        if not isinstance(self.channels_last, bool):
            raise ValueError(
                f"train.channels_last: must be true or false, got {self.channels_last!r}"
            )
        every = self.check_every
        if not (
            every == "auto"
            or (isinstance(every, int) and not isinstance(every, bool) and every >= 1)
        ):
            raise ValueError(
                f'train.check_every: must be a number of steps >= 1 or "auto", got {every!r}'
            )

    def resolve(self, device: torch.device) -> ResolvedOptions:
        """The concrete choices on ``device`` (before any runtime fallback)."""
        cuda = device.type == "cuda"
        return ResolvedOptions(
            cuda_graph=cuda if self.cuda_graph == "auto" else bool(self.cuda_graph),
            compile=self.compile,
            channels_last=self.channels_last,
            fused_optimizer=cuda if self.fused_optimizer == "auto" else bool(self.fused_optimizer),
            check_every=(CUDA_CHECK_EVERY if cuda else 1)
            if self.check_every == "auto"
            else int(self.check_every),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "cuda_graph": self.cuda_graph,
            "compile": self.compile,
            "channels_last": self.channels_last,
            "fused_optimizer": self.fused_optimizer,
            "check_every": self.check_every,
        }


@dataclass(frozen=True)
class ResolvedOptions:
    """:class:`StepOptions` with every ``"auto"`` decided for one device."""

    cuda_graph: bool
    compile: str
    channels_last: bool
    fused_optimizer: bool
    check_every: int


def make_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 4e-5,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over ``model``'s parameters, without weight decay on
    biases and norm weights (timm's grouping). ``fused`` uses the single-kernel implementation
    (CUDA); otherwise torch's default (multi-tensor ``foreach`` on CUDA, a loop on CPU). ``lr`` is in units of the update."""

    groups = param_groups_weight_decay(model, weight_decay)
    impl: dict[str, Any] = {"fused": True} if fused else {}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, **impl)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **impl)
    raise ValueError(f"train.optimizer: must be sgd or adamw, got {name!r}")


def pad_targets(boxes: Tensor, labels: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    """Pad ``boxes`` [B, M, 4] with zeros and ``labels`` [B, M] with -1 to ``rows`` rows.

    Raises ``ValueError`` when ``M > rows``: the batch holds more objects than the step was
    built for (raise ``max_objects``)."""
    have = boxes.shape[1]
    if have > rows:
        raise ValueError(
            f"max_objects: a batch has {have} object rows but the step was built "
            f"for {rows}; build it with max_objects >= {have}"
        )
    if have == rows:
        return boxes, labels
    return F.pad(boxes, (0, 0, 0, rows - have)), F.pad(labels, (0, rows - have), value=-1)


class LossMonitor:
    """Keeps each step's loss on the device and checks them for NaN/inf every ``check_every``
    steps (one host synchronization per check).

    ``record(step, loss)`` stores the loss of optimizer step ``step`` (0-based);
    ``flush()`` checks everything recorded so far, raises :class:`DivergedError` with the first
    non-finite step, and returns the last loss as a float (``nan`` when nothing was recorded)."""

    def __init__(self, *, check_every: int, device: torch.device) -> None:
        if not (isinstance(check_every, int) and check_every >= 1):
            raise ValueError(f"check_every: must be an integer >= 1, got {check_every!r}")
        self.check_every = check_every
        self._buffer = torch.zeros(check_every, dtype=torch.float32, device=device)
        self._first_step: int | None = None
        self._count = 0
        self.last = math.nan

    def record(self, step: int, loss: Tensor) -> bool:
        """Store ``loss`` (a scalar tensor); returns True when this call flushed (checked)."""
        if self._count == 0:
            self._first_step = step
        self._buffer[self._count].copy_(loss.detach().reshape(()), non_blocking=True)
        self._count += 1
        if self._count == self.check_every:
            self.flush()
            return True
        return False

    def flush(self) -> float:
        """Check the stored losses; raise :class:`DivergedError` at the first bad one."""
        if self._count:
            values = self._buffer[: self._count].tolist()
            first, self._count = self._first_step or 0, 0
            for offset, value in enumerate(values):
                if not math.isfinite(value):
                    raise DivergedError(first + offset, value)
            self.last = values[-1]
        return self.last


class TrainStep:
    """One training step of a detector: ``step(images, boxes, labels)`` → the loss.

    Args (keyword-only):
        model: the detector (its forward returns per-level class and box outputs).
        criterion: :class:`effscale.detector.loss.DetectionLoss` (or anything with its signature).
        optimizer: built over ``model``'s parameters (see :func:`make_optimizer`).
        anchors (Tensor[N, 4]): on the training device.
        num_classes (int): ``C``.
        grad_clip (float): clip the global gradient norm to this; 0 disables.
        autocast_dtype: e.g. ``torch.bfloat16``; None runs in float32.
        options (ResolvedOptions): the levers, see :meth:`StepOptions.resolve`.
        max_objects (int | None): rows ``M`` every batch is padded to (required for CUDA graphs;
            None keeps each batch's own ``M``).

    Calling it with ``images`` float32 [B, 3, H, W] (normalized), ``boxes`` float32 [B, M, 4]
    ``(x1, y1, x2, y2)`` pixels and ``labels`` int64 [B, M] (-1 = padding), all on the device,
    runs the step and returns the loss as a detached float32 scalar tensor on the device (no
    host synchronization). :attr:`levers` maps each lever to what is in effect, with the reason
    for any fallback.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        anchors: Tensor,
        num_classes: int,
        grad_clip: float,
        autocast_dtype: torch.dtype | None,
        options: ResolvedOptions,
        max_objects: int | None = None,
    ) -> None:
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.anchors = anchors
        self.num_classes = num_classes
        self.grad_clip = float(grad_clip)
        self.autocast_dtype = autocast_dtype
        self.options = options
        self.max_objects = max_objects
        self.device = anchors.device
        self.steps_run = 0
        self.levers: dict[str, str] = {
            "optimizer": "fused" if options.fused_optimizer else "default",
            "check_every": str(options.check_every),
        }
        self._forward_model: Callable = model
        self._loss_fn: Callable = criterion
        self._graph: Any = None
        self._static: tuple[Tensor, ...] | None = None
        self._static_loss: Tensor | None = None
        self._params = [p for p in model.parameters() if p.requires_grad]

        self.levers["channels_last"] = "on" if options.channels_last else "off"
        if options.channels_last:
            model.to(memory_format=torch.channels_last)

        self._use_graph = options.cuda_graph
        if options.cuda_graph and self.device.type != "cuda":
            self._use_graph = False
            self.levers["cuda_graph"] = "off: needs a CUDA device"
        elif options.cuda_graph and options.compile != "off":
            self._use_graph = False
            self.levers["cuda_graph"] = (
                "off: torch.compile is on (its mode 'reduce-overhead' uses CUDA graphs itself)"
            )
        elif options.cuda_graph and max_objects is None:
            self._use_graph = False
            self.levers["cuda_graph"] = "off: needs max_objects for fixed target shapes"
        else:
            self.levers["cuda_graph"] = "pending" if options.cuda_graph else "off"

        self._compile_pending = options.compile != "off"
        self.levers["compile"] = "pending" if self._compile_pending else "off"
        if self._compile_pending:
            try:
                self._forward_model = torch.compile(model, mode=options.compile)
                self._loss_fn = torch.compile(criterion, mode=options.compile)
            except Exception as exc:  # torch.compile unavailable on this platform
                self._fall_back_from_compile(exc)

    # -- the step ---------------------------------------------------------------------------

    def _forward_loss(
        self,
        images: Tensor,
        boxes: Tensor,
        labels: Tensor,
        *,
        cache: bool = True,
        eager: bool = False,
    ) -> Tensor:
        """The loss of one batch; ``eager`` bypasses ``torch.compile`` (the reference)."""
        model, loss_fn = (
            (self.model, self.criterion) if eager else (self._forward_model, self._loss_fn)
        )
        dtype = self.autocast_dtype
        with torch.autocast(
            self.device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=cache
        ):
            cls_levels, box_levels = model(images)
        cls, box = flatten_outputs(cls_levels, box_levels, self.num_classes)
        return loss_fn(cls, box, self.anchors, boxes, labels)["loss"]

    def _finish(self) -> None:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip)
        self.optimizer.step()

    def _eager_step(self, images: Tensor, boxes: Tensor, labels: Tensor) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._forward_loss(images, boxes, labels)
        loss.backward()
        self._finish()
        return loss.detach()

    def _prepare(
        self, images: Tensor, boxes: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        if self.options.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.max_objects is not None:
            boxes, labels = pad_targets(boxes, labels, self.max_objects)
        return images, boxes, labels

    def __call__(self, images: Tensor, boxes: Tensor, labels: Tensor) -> Tensor:
        images, boxes, labels = self._prepare(images, boxes, labels)
        if self._graph is not None:
            return self._replay(images, boxes, labels)
        if self._compile_pending:
            loss = self._first_compiled_step(images, boxes, labels)
        elif self._use_graph and self.steps_run >= GRAPH_WARMUP_STEPS:
            loss = self._capture_and_replay(images, boxes, labels)
        elif self._use_graph:
            loss = self._side_stream_step(images, boxes, labels)
        else:
            loss = self._eager_step(images, boxes, labels)
        self.steps_run += 1
        return loss

    # -- torch.compile ----------------------------------------------------------------------

    def _fall_back_from_compile(
        self,
        exc: BaseException | None = None,
        *,
        reason: str | None = None,
        kind: str = "compile failed",
    ) -> None:
        if exc is not None:
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            detail = f"{kind} ({type(exc).__name__}: {reason})"
        else:
            detail = f"{kind} ({reason})"
        warnings.warn(
            f"torch.compile: {kind}; training continues eagerly: {reason}",
            RuntimeWarning,
            stacklevel=3,
        )
        self.levers["compile"] = f"off: {detail}"
        self._forward_model = self.model
        self._loss_fn = self.criterion
        self._compile_pending = False

    def _first_compiled_step(self, images: Tensor, boxes: Tensor, labels: Tensor) -> Tensor:
        """The first call compiles and checks the compiled loss against the eager one on the
        same batch; a compile error or a mismatch (a miscompile: torch 2.11's Inductor on CPU
        returns wrong argmax indices inside the anchor assignment) falls back to eager for this
        and every later step. The parameters, and BatchNorm's statistics, are untouched until
        the compiled loss has passed the check and its backward pass has succeeded."""
        buffers = [b.detach().clone() for b in self.model.buffers()]

        def restore_buffers() -> None:
            with torch.no_grad():
                for live, saved in zip(self.model.buffers(), buffers):
                    live.copy_(saved)

        with torch.no_grad():
            reference = float(self._forward_loss(images, boxes, labels, eager=True))
        restore_buffers()
        try:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._forward_loss(images, boxes, labels)
            compiled = float(loss.detach())
            agree = math.isclose(compiled, reference, rel_tol=COMPILE_CHECK_RTOL, abs_tol=1e-6)
            if not (agree or not (math.isfinite(compiled) or math.isfinite(reference))):
                # (both non-finite: the data diverges either way, LossMonitor reports it)
                self.optimizer.zero_grad(set_to_none=True)
                restore_buffers()
                self._fall_back_from_compile(
                    reason=(
                        f"the compiled loss {compiled:.6g} differs from the eager loss "
                        f"{reference:.6g} on the same batch (a miscompile)"
                    ),
                    kind="miscompiled",
                )
                return self._eager_step(images, boxes, labels)
            loss.backward()
        except Exception as exc:
            if not _is_compile_error(exc):
                raise
            self.optimizer.zero_grad(set_to_none=True)
            restore_buffers()
            self._fall_back_from_compile(exc)
            return self._eager_step(images, boxes, labels)
        self._finish()
        self._compile_pending = False
        self.levers["compile"] = f"on: mode {self.options.compile}"
        return loss.detach()

    # -- CUDA graphs ------------------------------------------------------------------------

    def _side_stream_step(self, images: Tensor, boxes: Tensor, labels: Tensor) -> Tensor:
        """Warm-up before capture runs on a side stream, as CUDA-graph capture requires."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            loss = self._eager_step(images, boxes, labels)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return loss

    def _capture_and_replay(self, images: Tensor, boxes: Tensor, labels: Tensor) -> Tensor:
        static = (images.clone(), boxes.clone(), labels.clone())
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates .grad
        try:
            # thread_local: a DataLoader's pin-memory thread may call CUDA during the capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_loss = self._forward_loss(*static, cache=False)
                static_loss.backward()
        except Exception as exc:
            torch.cuda.synchronize(self.device)
            reason = " ".join(str(exc).split())[:200]
            warnings.warn(
                f"CUDA-graph capture failed, training continues eagerly: {reason}",
                RuntimeWarning,
                stacklevel=3,
            )
            self.levers["cuda_graph"] = f"off: capture failed ({type(exc).__name__}: {reason})"
            self._use_graph = False
            return self._eager_step(images, boxes, labels)
        self._graph, self._static, self._static_loss = graph, static, static_loss.detach()
        self.levers["cuda_graph"] = f"on: captured after {GRAPH_WARMUP_STEPS} eager steps"
        return self._replay(images, boxes, labels, count=False)

    def _replay(
        self, images: Tensor, boxes: Tensor, labels: Tensor, *, count: bool = True
    ) -> Tensor:
        assert self._static is not None and self._static_loss is not None  # captured
        static_images, static_boxes, static_labels = self._static
        if images.shape != static_images.shape or boxes.shape != static_boxes.shape:
            raise ValueError(
                f"images/boxes: the CUDA graph was captured for "
                f"{tuple(static_images.shape)} / {tuple(static_boxes.shape)}, got "
                f"{tuple(images.shape)} / {tuple(boxes.shape)}; keep batch_size "
                "fixed (drop_last) and pad targets to max_objects"
            )
        static_images.copy_(images, non_blocking=True)
        static_boxes.copy_(boxes, non_blocking=True)
        static_labels.copy_(labels, non_blocking=True)
        self._graph.replay()
        self._finish()
        if count:
            self.steps_run += 1
        return self._static_loss.clone()


def _is_compile_error(exc: BaseException) -> bool:
    """True for errors raised by dynamo/inductor while compiling (not by the model itself)."""
    module = type(exc).__module__ or ""
    if module.startswith(("torch._dynamo", "torch._inductor", "torch._subclasses")):
        return True
    try:
        from torch._dynamo.exc import BackendCompilerFailed, TorchDynamoException
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, (BackendCompilerFailed, TorchDynamoException))
