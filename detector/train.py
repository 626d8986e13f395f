"""The proxy training loop: one short training run of one detector on one dataset.

It trains with SGD (momentum, Nesterov) or AdamW, linear warmup then cosine decay, gradient
clipping and an EMA of the weights (timm's ``ModelEmaV3`` with warmup, as :class:`effscale.detector.ema.WeightEma`), in bf16 autocast on
CUDA and fp32 on CPU. The budget is epochs, steps or seconds. After every epoch the EMA model is
evaluated on the validation split with pycocotools and ``on_epoch(epoch, metrics)`` is called
(the searcher prunes from there). Checkpoints are written atomically and hold only tensors and
plain data, so they load with ``weights_only=True``.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch.utils.data import DataLoader, Subset

from .anchors import cached_anchors
from .config import DetectorConfig, config_from_dict
from .data import (
    CocoSplit,
    DeviceAugment,
    DeviceCache,
    ResizePad,
    TrainTransform,
    cache_nbytes,
    collate_detection,
    locate_split,
    make_loader,
    normalize,
    open_split,
    padded_object_count,
)
from .ema import WeightEma
from .evaluate import METRIC_NAMES, evaluate_model
from .loss import DetectionLoss
from .model import build_model
from .pretrained import check_pretrained_fits, load_pretrained_backbone
from .train_step import DivergedError, LossMonitor, StepOptions, TrainStep, make_optimizer

__all__ = [
    "OPTIMIZERS",
    "DataSettings",
    "TrainSettings",
    "TrainResult",
    "DivergedError",
    "CheckpointError",
    "train_proxy",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_device",
    "DATA_CACHES",
    "DEVICE_CACHE_FRACTION",
]

OPTIMIZERS = ("sgd", "adamw")
CHECKPOINT_NAME = "checkpoint.pt"
#: the largest budgets a training accepts: more is a typo (or ``inf``), not a proxy run
MAX_EPOCHS = 100_000
MAX_STEPS = 1_000_000_000
MAX_SECONDS = 30 * 24 * 3600.0
#: what every effscale checkpoint holds, and its type
CHECKPOINT_KEYS: dict[str, type] = {"config": dict, "model": dict, "step": int, "epoch": int}
#: ``DataSettings.cache`` values
DATA_CACHES = ("auto", "device", "off")
#: ``cache="auto"`` keeps the training split on a CUDA device when it needs at most this
#: fraction of the device's memory (7 GiB of an H200's 139 GiB)
DEVICE_CACHE_FRACTION = 0.05


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not an effscale checkpoint."""


def _require(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{name}: {message}")


@dataclass(frozen=True)
class DataSettings:
    """Where the data is: a dataset folder ``dir`` with ``train/`` and ``val/`` splits (see
    :func:`effscale.detector.data.split_paths`), or a split given where it lies, ``train`` /
    ``val`` as :class:`effscale.detector.data.CocoSplit` (an annotation file and an image
    folder; a split given so is used instead of ``dir``'s); optional subsets (images, fixed seed)
    and loader workers.

    ``cache``: ``"device"`` decodes the training split once into device memory and augments it
    there (:class:`effscale.detector.data.DeviceCache`): no loader, no host-to-device copies per step.
    ``"off"`` uses a DataLoader with PIL augmentation. ``"auto"``: the device cache on CUDA when
    it needs at most ``DEVICE_CACHE_FRACTION`` of the device's memory, else the DataLoader."""

    dir: Path | None = None
    train_subset: int | None = None
    val_subset: int | None = None
    num_workers: int = 0
    cache: str = "auto"
    train: CocoSplit | None = None
    val: CocoSplit | None = None

    def __post_init__(self) -> None:
        if self.dir is not None:
            object.__setattr__(self, "dir", Path(self.dir))
        for split in ("train", "val"):
            files = getattr(self, split)
            _require(
                files is None or isinstance(files, CocoSplit),
                f"data.{split}",
                f"must be a CocoSplit(annotations=..., images=...) or None, got {files!r}",
            )
            _require(
                files is not None or self.dir is not None,
                f"data.{split}",
                "has no location; give dir (a dataset folder) or "
                f"{split}=CocoSplit(annotations=..., images=...)",
            )
        for name in ("train_subset", "val_subset"):
            value = getattr(self, name)
            _require(
                value is None or (isinstance(value, int) and value >= 1),
                f"data.{name}",
                f"must be a positive number of images, got {value!r}",
            )
        _require(
            isinstance(self.num_workers, int) and self.num_workers >= 0,
            "data.num_workers",
            f"must be an integer >= 0, got {self.num_workers!r}",
        )
        _require(
            self.cache in DATA_CACHES,
            "data.cache",
            f"must be one of {', '.join(DATA_CACHES)}, got {self.cache!r}",
        )

    def split_files(self, split: str) -> CocoSplit:
        """The annotation file and image folder of ``split`` (``"train"`` or ``"val"``): the
        split given, else its folder under ``dir``. Raises
        :class:`effscale.detector.data.DataError` when they are missing."""
        return locate_split(split, data_dir=self.dir, files=getattr(self, split, None))


@dataclass(frozen=True)
class TrainSettings:
    """How to train. Exactly one budget: ``epochs``, ``steps`` (optimizer steps) or ``seconds``
    (wall-clock training time, evaluation excluded). ``lr`` is the peak learning rate after
    ``warmup_fraction`` of the budget; ``ema_decay`` None disables the EMA. ``cuda_graph``,
    ``compile``, ``channels_last``, ``fused_optimizer`` and ``check_every`` are the speed levers
    of :class:`effscale.detector.train_step.StepOptions` (see :attr:`step_options`)."""

    epochs: float | None = None
    steps: int | None = None
    seconds: float | None = None
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_fraction: float = 0.1
    grad_clip: float = 10.0
    ema_decay: float | None = 0.999
    bn_momentum: float = 0.1
    scale_jitter: tuple[float, float] = (0.8, 1.2)
    hflip: float = 0.5
    seed: int = 0
    checkpoint_every: int = 0
    eval_every_epoch: bool = True
    #: also evaluate the freshly initialized model once before training (the floor to clear)
    eval_untrained: bool = False
    #: ImageNet weights for the backbone: a timm EfficientNet name or a state-dict file
    #: (:mod:`effscale.detector.pretrained`); None starts from random weights
    pretrained: str | None = None
    # the speed levers, flat so that they are plain [train] keys; StepOptions owns the defaults
    cuda_graph: bool | str = StepOptions.cuda_graph
    compile: str = StepOptions.compile
    channels_last: bool = StepOptions.channels_last
    fused_optimizer: bool | str = StepOptions.fused_optimizer
    check_every: int | str = StepOptions.check_every

    def __post_init__(self) -> None:
        budgets = [n for n in ("epochs", "steps", "seconds") if getattr(self, n) is not None]
        if not budgets:
            object.__setattr__(self, "epochs", 10)
            budgets = ["epochs"]
        _require(
            len(budgets) == 1,
            "train",
            f"give exactly one budget of epochs, steps or seconds, got {', '.join(budgets)}",
        )
        for name, cap in (("epochs", MAX_EPOCHS), ("seconds", MAX_SECONDS)):
            value = getattr(self, name)
            _require(
                value is None
                or (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                    and 0 < value <= cap
                ),
                f"train.{name}",
                f"must be a finite number in (0, {cap:g}], got {value!r}",
            )
        _require(
            self.steps is None
            or (
                isinstance(self.steps, int)
                and not isinstance(self.steps, bool)
                and 1 <= self.steps <= MAX_STEPS
            ),
            "train.steps",
            f"must be an integer in [1, {MAX_STEPS:,}], got {self.steps!r}",
        )
        _require(
            isinstance(self.seed, int)
            and not isinstance(self.seed, bool)
            and 0 <= self.seed < 2**31,
            "train.seed",
            f"must be an integer in [0, 2^31), got {self.seed!r}",
        )
        _require(
            isinstance(self.batch_size, int) and self.batch_size >= 2,
            "train.batch_size",
            f"must be an integer >= 2 (BatchNorm needs 2 images), got {self.batch_size!r}",
        )
        _require(
            self.optimizer in OPTIMIZERS,
            "train.optimizer",
            f"must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}",
        )
        _require(
            isinstance(self.lr, (int, float)) and 0 < self.lr <= 10,
            "train.lr",
            f"must be in (0, 10], got {self.lr!r}",
        )
        _require(
            0 <= self.warmup_fraction < 1,
            "train.warmup_fraction",
            f"must be in [0, 1), got {self.warmup_fraction!r}",
        )
        _require(
            self.grad_clip >= 0,
            "train.grad_clip",
            f"must be >= 0 (0 = off), got {self.grad_clip!r}",
        )
        _require(
            self.ema_decay is None or 0 < self.ema_decay < 1,
            "train.ema_decay",
            f"must be in (0, 1) or None, got {self.ema_decay!r}",
        )
        _require(
            isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
            "train.checkpoint_every",
            f"must be an integer >= 0 steps, got {self.checkpoint_every!r}",
        )
        _require(
            0 < self.bn_momentum <= 1,
            "train.bn_momentum",
            f"must be in (0, 1], got {self.bn_momentum!r}",
        )
        object.__setattr__(self, "scale_jitter", tuple(self.scale_jitter))
        _require(
            self.pretrained is None or (isinstance(self.pretrained, str) and self.pretrained != ""),
            "train.pretrained",
            f"must be a timm model name or a weights file, got {self.pretrained!r}",
        )
        _ = self.step_options  # validates the speed levers

    @property
    def step_options(self) -> StepOptions:
        """The speed levers as :class:`~effscale.detector.train_step.StepOptions`."""
        return StepOptions(
            cuda_graph=self.cuda_graph,
            compile=self.compile,
            channels_last=self.channels_last,
            fused_optimizer=self.fused_optimizer,
            check_every=self.check_every,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists for tuples)."""
        data = asdict(self)
        data["scale_jitter"] = list(self.scale_jitter)
        return data


@dataclass
class TrainResult:
    """What a run produced: the final validation ``metrics`` (``METRIC_NAMES`` → [0, 1]), the
    training throughput in images per second (evaluation excluded), wall seconds of the whole
    run, optimizer steps, epochs, the per-epoch history and the speed ``levers`` in effect
    (:attr:`effscale.detector.train_step.TrainStep.levers`, plus ``data``: the training data path)."""

    metrics: dict[str, float]
    images_per_s: float
    seconds: float
    steps: int
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: str | None = None
    levers: dict[str, str] = field(default_factory=dict)
    #: the metrics of the model before its first step (``TrainSettings.eval_untrained``)
    untrained_metrics: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``metrics.json``."""
        return {
            **self.metrics,
            "images_per_s": self.images_per_s,
            "seconds": self.seconds,
            "steps": self.steps,
            "epochs": self.epochs,
            "history": self.history,
            "checkpoint": self.checkpoint,
            "levers": self.levers,
            "untrained_metrics": self.untrained_metrics,
        }


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None → ``cuda`` when available, else ``cpu``; anything else as given. A string
    that names no torch device, or a device this machine does not have, is a one-line
    ``ValueError`` naming ``device``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device: {device!r} is not a device; use --device auto, cpu, cuda or cuda:N"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "device: cuda was asked for but no CUDA device is available; use --device cpu"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device: {resolved} does not exist (this machine has {count} CUDA device(s)); "
                f"use cuda:0..cuda:{count - 1}"
            )
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("device: mps is not available here; use --device cpu")
    elif resolved.type != "cpu":
        raise ValueError(
            f"device: {resolved.type} is not supported for training; use --device cpu or cuda"
        )
    return resolved


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def _lr_factor(progress: float, warmup: float) -> float:
    """Linear warmup to 1 over ``warmup`` of the budget, then cosine decay to 0.01."""
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)
    span = max(1e-9, 1 - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / span)))
    return 0.01 + 0.99 * cosine


def _make_optimizer(
    model: torch.nn.Module, settings: TrainSettings, fused: bool
) -> tuple[torch.optim.Optimizer, str | None]:
    """The optimizer, and why ``fused`` was not honoured (None when it was, or not asked)."""
    kwargs: dict[str, Any] = dict(
        name=settings.optimizer,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    if fused:
        try:
            return make_optimizer(model, fused=True, **kwargs), None
        except (RuntimeError, ValueError) as exc:  # no fused kernel for this device
            reason = " ".join(str(exc).split())[:160]
            return make_optimizer(model, fused=False, **kwargs), f"default: fused failed ({reason})"
    return make_optimizer(model, fused=False, **kwargs), None


def _use_device_cache(data: DataSettings, device: torch.device, nbytes: int) -> tuple[bool, str]:
    if data.cache == "off":
        return False, "loader: cache off"
    if data.cache == "device":
        return True, f"device cache: {nbytes / 2**20:.0f} MiB"
    if device.type != "cuda":
        return False, "loader: cache auto keeps the loader off CUDA"
    total = torch.cuda.get_device_properties(device).total_memory
    if nbytes > DEVICE_CACHE_FRACTION * total:
        return False, (
            f"loader: the cache would need {nbytes / 2**30:.1f} GiB, over "
            f"{DEVICE_CACHE_FRACTION:.0%} of the device"
        )
    return True, f"device cache: {nbytes / 2**20:.0f} MiB"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors and plain data only) atomically: temp file, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _check_archive(path: Path) -> None:
    """The zip archive of a ``torch.save`` file, every member's CRC-32 checked: flipped bytes
    in a tensor load without any error otherwise (``torch.load`` does not verify them)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({reason}); delete it or use an earlier one"
        ) from None
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: {bad} fails its CRC check (damaged bytes); delete it "
            "or use an earlier one"
        )


def _check_state(path: Path, state: Any) -> None:
    """Refuse a loaded checkpoint without the keys :data:`CHECKPOINT_KEYS` (of their types) or
    with a non-finite value in a floating-point tensor of its weights."""
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not an effscale checkpoint (not a dict)")
    for key, kind in CHECKPOINT_KEYS.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            problem = "is missing" if key not in state else f"is {type(value).__name__}"
            raise CheckpointError(
                f"checkpoint {path} is not a complete effscale checkpoint ({key!r} {problem}, "
                f"expected {kind.__name__}); use a checkpoint written by effscale train"
            )
    for part in ("model", "ema"):
        weights = state.get(part)
        if not isinstance(weights, dict):
            continue
        for name, tensor in weights.items():
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.is_floating_point()
                and not bool(torch.isfinite(tensor).all())
            ):
                raise CheckpointError(
                    f"checkpoint {path} holds non-finite weights ({part} {name} has NaN or inf): "
                    "the training diverged before it was saved; use an earlier checkpoint"
                )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (never unpickles arbitrary objects), after
    checking its archive (every member's CRC-32) and before handing it out its keys
    (:data:`CHECKPOINT_KEYS`) and that its weights are finite; each problem is one
    :class:`CheckpointError` line naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    _check_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad magic, forbidden global, ...
        reason = " ".join(str(exc).split())[:160]
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({reason}); delete it or use an earlier one"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint {path} is not an effscale checkpoint (no model/config)")
    _check_state(path, state)
    return state


def _check_out_dir(out_dir: str | Path | None) -> None:
    """Refuse an output folder that is an existing file, or lies below one: found only at the
    first checkpoint otherwise, after minutes of training."""
    if out_dir is None:
        return
    out = Path(out_dir)
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(
                    f"out: {folder} is a file, so {out} cannot be the output folder; give a "
                    "new or existing folder"
                )
            return


def _epoch_order(num_images: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_images, generator=generator).tolist()


def train_proxy(
    config: DetectorConfig,
    *,
    data: DataSettings,
    settings: TrainSettings = TrainSettings(),
    device: str | torch.device | None = "auto",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    quiet: bool = False,
    out_dir: str | Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``config`` on ``data`` within ``settings``' budget; returns a :class:`TrainResult`.

    ``out_dir`` receives ``checkpoint.pt`` (every ``settings.checkpoint_every`` steps and at each
    epoch end) and ``metrics.json``; with ``resume=True`` training continues from the checkpoint
    there (step count, epoch, optimizer and EMA state). Raises :class:`DivergedError` on a
    non-finite loss, :class:`effscale.detector.data.DataError` on bad data. An ``out_dir``
    that cannot be a folder (an existing file, or below one) is refused before anything runs.
    """

    _check_out_dir(out_dir)
    device = resolve_device(device)
    if settings.pretrained is not None:  # refuse weights that do not fit before any data work
        check_pretrained_fits(config.backbone, settings.pretrained, padding=config.padding)
    _seed_everything(settings.seed)
    train_set = open_split(
        data.split_files("train"),
        subset=data.train_subset,
        seed=settings.seed,
        transform=TrainTransform(
            config.image_size,
            scale_range=settings.scale_jitter,
            hflip_prob=settings.hflip,
            seed=settings.seed,
        ),
    )
    val_set = open_split(
        data.split_files("val"),
        subset=data.val_subset,
        seed=settings.seed,
        transform=ResizePad(config.image_size),
    )
    if train_set.num_classes > config.num_classes:
        raise ValueError(
            f"num_classes: the data has {train_set.num_classes} classes but the "
            f"config has {config.num_classes}; set num_classes >= "
            f"{train_set.num_classes}"
        )
    if len(train_set) < settings.batch_size:
        raise ValueError(
            f"train.batch_size: {settings.batch_size} is more than the "
            f"{len(train_set)} training images; lower it or use more images"
        )
    val_loader = make_loader(
        val_set,
        batch_size=max(2, settings.batch_size),
        train=False,
        num_workers=data.num_workers,
        pin_memory=device.type == "cuda",
    )
    steps_per_epoch = len(train_set) // settings.batch_size

    max_objects = padded_object_count(max(train_set.objects_per_image, default=0))
    use_cache, data_lever = _use_device_cache(
        data, device, cache_nbytes(len(train_set), config.image_size, max_objects)
    )
    cache = None
    if use_cache:
        cache = DeviceCache.from_dataset(
            train_set, size=config.image_size, device=device, quiet=quiet
        )
        augment = DeviceAugment(scale_range=settings.scale_jitter, hflip_prob=settings.hflip)
        augment_generator = torch.Generator(device=device)

    model = build_model(config).to(device)
    if settings.pretrained is not None:
        load_pretrained_backbone(model.backbone, settings.pretrained)
    for module in model.modules():  # short proxy runs need BN statistics that keep up
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = settings.bn_momentum
    criterion = DetectionLoss(num_classes=config.num_classes)
    options = settings.step_options.resolve(device)
    optimizer, optimizer_note = _make_optimizer(model, settings, options.fused_optimizer)
    anchors = cached_anchors(
        config.anchors, config.image_size, config.min_level, config.max_level, device=device
    )
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    train_step = TrainStep(
        model=model,
        criterion=criterion,
        optimizer=optimizer,
        anchors=anchors,
        num_classes=config.num_classes,
        grad_clip=settings.grad_clip,
        autocast_dtype=autocast_dtype,
        options=options,
        max_objects=max_objects if options.cuda_graph else None,
    )
    ema = None
    if settings.ema_decay is not None:
        ema = WeightEma(model, decay=settings.ema_decay, use_warmup=True)
    monitor = LossMonitor(check_every=options.check_every, device=device)
    untrained = None
    if settings.eval_untrained and not resume:
        untrained = evaluate_model(
            model,
            val_loader,
            config=config,
            dataset=val_set,
            device=device,
            autocast_dtype=autocast_dtype,
        )

    def epoch_batches(epoch: int, skip: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """This epoch's batches as (normalized images, boxes, labels) on the device."""
        order = _epoch_order(len(train_set), settings.seed, epoch)[skip:]
        size = settings.batch_size
        if cache is not None:
            augment_generator.manual_seed(settings.seed * 7919 + epoch)
            index = torch.tensor(order, dtype=torch.int64).to(device)
            for start in range(0, len(order) - size + 1, size):
                yield cache.batch(
                    index[start : start + size], augment=augment, generator=augment_generator
                )
            return
        reseed = getattr(train_set.transform, "reseed", None)
        if callable(reseed):
            reseed(settings.seed * 7919 + epoch)
        loader = DataLoader(
            Subset(train_set, order),
            batch_size=size,
            drop_last=True,
            collate_fn=collate_detection,
            num_workers=data.num_workers,
            pin_memory=device.type == "cuda",
        )
        for batch in loader:
            batch = batch.to(device)
            yield normalize(batch.images), batch.boxes, batch.labels

    step, epoch, history, elapsed_before = 0, 0, [], 0.0
    out_path = Path(out_dir) if out_dir is not None else None
    if resume:
        if out_path is None:
            raise ValueError("resume: needs out_dir, the folder that holds checkpoint.pt")
        state = load_checkpoint(out_path)
        if config_from_dict(state["config"]) != config:
            raise CheckpointError(
                f"checkpoint in {out_path} was made for another config; train "
                "into a new --out folder"
            )
        model.load_state_dict(state["model"])
        if state.get("optimizer") is not None:  # none in an imported checkpoint: a new one
            optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.module.load_state_dict(state["ema"])
        step, epoch = int(state["step"]), int(state["epoch"])
        history = list(state.get("history", []))
        elapsed_before = float(state.get("train_seconds", 0.0))

    def budget_progress(train_seconds: float) -> float:
        if settings.steps is not None:
            return step / settings.steps
        if settings.epochs is not None:
            return step / max(1, round(settings.epochs * steps_per_epoch))
        assert settings.seconds is not None  # exactly one budget is set
        return train_seconds / settings.seconds

    def checkpoint(train_seconds: float) -> None:
        if out_path is None:
            return
        save_checkpoint(
            out_path / CHECKPOINT_NAME,
            {
                "format": "effscale-checkpoint-1",
                "config": config.to_dict(),
                "settings": settings.to_dict(),
                "model": model.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "step": step,
                "epoch": epoch,
                "train_seconds": train_seconds,
                "history": history,
            },
        )

    progress = _Progress(
        quiet=quiet, total=_total_steps(settings, steps_per_epoch), seconds=settings.seconds
    )
    start = time.perf_counter()
    train_seconds = elapsed_before
    images_seen = 0
    metrics: dict[str, float] = {}
    done = budget_progress(train_seconds) >= 1
    model.train()
    with progress:
        while not done:
            skip = (step - epoch * steps_per_epoch) * settings.batch_size if resume else 0
            skip = max(0, min(skip, len(train_set)))
            resume = False
            batches = epoch_batches(epoch, skip)
            while True:
                tick = time.perf_counter()  # data time counts: it is part of a trial's cost
                batch = next(batches, None)
                if batch is None:
                    break
                images, boxes, labels = batch
                factor = _lr_factor(budget_progress(train_seconds), settings.warmup_fraction)
                for group in optimizer.param_groups:
                    group["lr"] = settings.lr * factor
                loss = train_step(images, boxes, labels)
                monitor.record(step, loss)
                step += 1
                if ema is not None:
                    ema.update(model, step=step)
                images_seen += settings.batch_size
                train_seconds += time.perf_counter() - tick
                progress.advance(step, train_seconds, monitor.last)
                if settings.checkpoint_every and step % settings.checkpoint_every == 0:
                    monitor.flush()  # never store a diverged model
                    checkpoint(train_seconds)
                if budget_progress(train_seconds) >= 1:
                    done = True
                    break
            monitor.flush()
            epoch += 1
            if done or settings.eval_every_epoch:
                eval_model = ema.module if ema is not None else model
                metrics = evaluate_model(
                    eval_model,
                    val_loader,
                    config=config,
                    dataset=val_set,
                    device=device,
                    autocast_dtype=autocast_dtype,
                )
                history.append({"epoch": epoch, "step": step, **metrics})
                progress.note(epoch, metrics)
                checkpoint(train_seconds)
                if on_epoch is not None:
                    on_epoch(epoch, metrics)
    if not metrics:  # resumed from a checkpoint whose budget was already spent
        eval_model = ema.module if ema is not None else model
        metrics = evaluate_model(
            eval_model,
            val_loader,
            config=config,
            dataset=val_set,
            device=device,
            autocast_dtype=autocast_dtype,
        )
    run_seconds = time.perf_counter() - start
    new_seconds = train_seconds - elapsed_before
    result = TrainResult(
        metrics={k: metrics[k] for k in METRIC_NAMES},
        images_per_s=images_seen / new_seconds if new_seconds > 0 else 0.0,
        seconds=run_seconds,
        steps=step,
        epochs=epoch,
        history=history,
        checkpoint=str(out_path / CHECKPOINT_NAME) if out_path is not None else None,
        untrained_metrics=untrained,
        levers={
            **train_step.levers,
            "data": data_lever,
            **({"optimizer": optimizer_note} if optimizer_note else {}),
        },
    )
    if out_path is not None:
        _write_json_atomic(out_path / "metrics.json", result.to_dict())
    return result


def _total_steps(settings: TrainSettings, steps_per_epoch: int) -> int | None:
    if settings.steps is not None:
        return settings.steps
    if settings.epochs is not None:
        return max(1, round(settings.epochs * steps_per_epoch))
    return None


def _finite_json(value: Any) -> Any:
    """``value`` with every number that is not finite (an undefined COCO breakdown) as ``None``
    and numpy/torch values as Python ones, so that ``json.dump(allow_nan=False)`` takes it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):
        return _finite_json(value.tolist())
    return value


def _write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` as strict JSON (``null``, never ``NaN``), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(_finite_json(data), handle, indent=2, default=float, allow_nan=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class _Progress:
    """A rich progress bar over steps (or seconds), silent in quiet mode."""

    def __init__(self, *, quiet: bool, total: int | None, seconds: float | None) -> None:
        self.quiet = quiet
        self.total = total
        self.seconds = seconds
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if not self.quiet:
            self._bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=False,
            )
            self._bar.__enter__()
            total = self.total if self.total is not None else int(math.ceil(self.seconds or 0))
            self._task = self._bar.add_task("train", total=total, info="")
        return self

    def advance(self, step: int, train_seconds: float, loss: float) -> None:
        if self._bar is not None:
            done = step if self.total is not None else min(train_seconds, self.seconds or 0)
            info = f"loss {loss:.4f}" if math.isfinite(loss) else ""
            self._bar.update(self._task, completed=done, info=info)

    def note(self, epoch: int, metrics: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.console.print(
                f"epoch {epoch}: AP {metrics['ap']:.4f}  AP50 {metrics['ap50']:.4f}"
            )

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
