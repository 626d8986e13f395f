"""Device-resident training data: a letterboxed image cache and vectorized augmentation.

A :class:`DeviceCache` decodes a split once on the CPU (with the :class:`ResizePad` geometry)
and keeps every canvas on the device as ``uint8``; :meth:`DeviceCache.batch` gathers a batch by
index and :func:`augment_batch` applies :class:`~effscale.detector.data.transforms.TrainTransform`'s
geometry (scale jitter, horizontal flip, random crop, box clipping and dropping) to the whole
batch with one ``affine_grid`` + ``grid_sample``. Every shape is static (``B``, ``H``, ``W`` and
the padded object count ``M`` never change) and nothing reads a tensor value back to the host,
so the step that consumes a batch can be captured in a CUDA graph.

Training-loop sketch::

    cache = DeviceCache.from_dataset(load_split(data_dir, "train"), size=(H, W), device="cuda")
    augment = DeviceAugment(scale_range=(0.8, 1.2), hflip_prob=0.5)
    generator = torch.Generator(device="cuda").manual_seed(seed)
    order = torch.randperm(cache.num_images, generator=generator, device="cuda")
    for start in range(0, cache.num_images - B + 1, B):
        images, boxes, labels = cache.batch(order[start:start + B], augment=augment, generator=generator)
        # images float32 [B, 3, H, W] ImageNet-normalized; boxes float32 [B, M, 4]; labels int64 [B, M]

Randomness: each augmented image uses four uniforms in ``[0, 1)`` -- scale, flip, crop x,
crop y, in that order -- drawn as one ``torch.rand((B, 4), generator=generator)`` call, or passed
in as ``uniforms``. ``torch.compile`` cannot trace a call that receives a ``torch.Generator``
object; inside a compiled region pass ``generator=None`` (torch's default generator of the
device) or draw :func:`draw_augment_uniforms` outside the region and pass ``uniforms``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader, Subset

from .coco import DataError
from .loader import OBJECTS_MULTIPLE, PAD_LABEL, padded_object_count
from .transforms import (
    MIN_BOX_SIDE,
    MIN_KEPT_AREA_FRACTION,
    ResizePad,
    _check_size,
    _fit_ratio,
    _resized_shape,
    imagenet_constants,
)

__all__ = [
    "PROGRESS_MIN_IMAGES",
    "DeviceAugment",
    "DeviceCache",
    "augment_batch",
    "cache_nbytes",
    "draw_augment_uniforms",
]

#: :meth:`DeviceCache.from_dataset` shows a progress bar for more images than this (unless quiet)
PROGRESS_MIN_IMAGES = 500
#: uniforms drawn per augmented image: scale, flip, crop x, crop y
_UNIFORMS_PER_IMAGE = 4
#: normalized grid coordinate far outside ``[-1, 1]``: grid_sample returns exact zeros there
_OUTSIDE = -4.0


def _normalize_float(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalize float32 ``[B, 3, H, W]`` images in ``0..255`` units, in place."""
    mean, inv_std = imagenet_constants(images.device)
    return images.sub_(mean).mul_(inv_std)


def _describe(tensor: Any) -> str:
    if not isinstance(tensor, torch.Tensor):
        return type(tensor).__name__
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)} on {tensor.device}"


def _check_positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{field} must be a positive integer, got {value!r}")
    return value


def cache_nbytes(num_images: int, size: tuple[int, int] | int, max_objects: int) -> int:
    """Bytes a :class:`DeviceCache` of ``num_images`` canvases of ``size`` needs on its device.

    The sum of ``uint8`` images ``[N, 3, H, W]``, ``float32`` boxes ``[N, M, 4]``, ``int64``
    labels ``[N, M]`` and ``float32`` content sizes ``[N, 2]``, with ``M = max_objects``.

    Raises:
        DataError: a count is not a positive integer or ``size`` is not ``(H, W)`` pixels.
    """
    num_images = _check_positive_int(num_images, "num_images")
    max_objects = _check_positive_int(max_objects, "max_objects")
    height, width = _check_size(size, "cache size")
    return num_images * (3 * height * width + max_objects * (4 * 4 + 8) + 2 * 4)


@dataclass(frozen=True)
class DeviceAugment:
    """Random scale jitter, horizontal flip and crop, applied on the device by :func:`augment_batch`.

    The same rules as :class:`~effscale.detector.data.transforms.TrainTransform`, with the letterboxed
    canvas as the starting point.

    Attributes:
        scale_range: ``(low, high)`` multipliers of the letterboxed content (which already has the
            fit-inside ratio), ``0 < low <= high``.
        hflip_prob: probability of a horizontal flip, in ``[0, 1]``.

    Raises:
        DataError: a field is out of range (the message names the field).
    """

    scale_range: tuple[float, float] = (0.8, 1.2)
    hflip_prob: float = 0.5

    def __post_init__(self) -> None:
        scale_range = self.scale_range
        if (
            not isinstance(scale_range, Sequence)
            or len(scale_range) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale_range)
            or not 0 < scale_range[0] <= scale_range[1] < float("inf")
        ):
            raise DataError(
                f"DeviceAugment scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}; "
                "e.g. scale_range=(0.8, 1.2)"
            )
        hflip_prob = self.hflip_prob
        if (
            isinstance(hflip_prob, bool)
            or not isinstance(hflip_prob, (int, float))
            or not 0.0 <= hflip_prob <= 1.0
        ):
            raise DataError(
                f"DeviceAugment hflip_prob must be a probability in [0, 1], got {hflip_prob!r}; e.g. hflip_prob=0.5"
            )
        object.__setattr__(self, "scale_range", (float(scale_range[0]), float(scale_range[1])))
        object.__setattr__(self, "hflip_prob", float(hflip_prob))


def draw_augment_uniforms(
    batch_size: int, *, device: torch.device | str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The uniforms :func:`augment_batch` draws: ``float32`` ``[B, 4]`` in ``[0, 1)`` on ``device``.

    Columns are scale, flip, crop x and crop y. ``generator=None`` uses torch's default generator
    of ``device``; a generator must live on ``device``.
    """
    return torch.rand((batch_size, _UNIFORMS_PER_IMAGE), generator=generator, device=device)


def _check_batch(
    images, boxes, labels, content_hw, size: tuple[int, int], where: str = "augment_batch"
) -> None:
    """Shape/dtype/device checks (metadata only: no tensor value is read); ``where`` names the caller."""
    if (
        not isinstance(images, torch.Tensor)
        or images.dtype != torch.uint8
        or images.ndim != 4
        or images.shape[1] != 3
    ):
        raise DataError(f"{where} images must be uint8 [B, 3, H, W], got {_describe(images)}")
    if tuple(images.shape[2:]) != size:
        raise DataError(
            f"{where} images are {list(images.shape[2:])} but size is {list(size)}; pass the cache's size"
        )
    count = images.shape[0]
    expected = {
        "boxes": (boxes, torch.float32, "float32 [B, M, 4]", 3),
        "labels": (labels, torch.int64, "int64 [B, M]", 2),
        "content_hw": (content_hw, torch.float32, "float32 [B, 2]", 2),
    }
    for name, (tensor, dtype, wanted, ndim) in expected.items():
        if (
            not isinstance(tensor, torch.Tensor)
            or tensor.dtype != dtype
            or tensor.ndim != ndim
            or tensor.shape[0] != count
            or tensor.device != images.device
        ):
            raise DataError(
                f"{where} {name} must be {wanted} on the images' device, got {_describe(tensor)}"
            )
    if boxes.shape[1:] != (labels.shape[1], 4) or content_hw.shape[1] != 2:
        raise DataError(
            f"{where} boxes {list(boxes.shape)}, labels {list(labels.shape)} and content_hw "
            f"{list(content_hw.shape)} disagree; boxes must be [B, M, 4] with labels [B, M] and content_hw [B, 2]"
        )


def _draw_geometry(
    uniforms: torch.Tensor, content_hw: torch.Tensor, size: tuple[int, int], augment: DeviceAugment
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image ``(scale, flip, x0, y0)`` from uniforms ``[B, 4]``; all ``[B]``, flip is bool."""
    low, high = augment.scale_range
    scale = low + (high - low) * uniforms[:, 0]
    flip = uniforms[:, 1] < augment.hflip_prob
    x0 = uniforms[:, 2] * (scale * content_hw[:, 1] - size[1]).clamp(min=0.0)
    y0 = uniforms[:, 3] * (scale * content_hw[:, 0] - size[0]).clamp(min=0.0)
    return scale, flip, x0, y0


def _sample_grid(
    scale: torch.Tensor,
    flip: torch.Tensor,
    x0: torch.Tensor,
    y0: torch.Tensor,
    content_hw: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """``grid_sample`` grid ``[B, H, W, 2]`` (align_corners=False) of the augmentation.

    Output pixel ``(u, v)`` reads the source at ``X = (u + 0.5 + x0) / s`` (``cw - X`` when
    flipped) and ``Y = (v + 0.5 + y0) / s`` in continuous canvas pixels. Reads are clamped to the
    centres of the content's edge pixels (edge replication, like PIL's resize), and pixels whose
    source lies outside the content get a far-outside coordinate, so they come out exactly 0.
    """
    height, width = size
    count = scale.shape[0]
    inv = scale.reciprocal()
    content_h, content_w = content_hw[:, 0], content_hw[:, 1]
    # source pixel X = a * (u + 0.5) + b; in normalized coordinates gx = a * xn + (a + 2 b / W - 1)
    a_x = torch.where(flip, -inv, inv)
    b_x = torch.where(flip, content_w - x0 * inv, x0 * inv)
    b_y = y0 * inv
    zero = torch.zeros_like(inv)
    theta = torch.stack(
        [
            torch.stack([a_x, zero, a_x + 2.0 * b_x / width - 1.0], dim=1),
            torch.stack([zero, inv, inv + 2.0 * b_y / height - 1.0], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [count, 3, height, width], align_corners=False)
    gx, gy = grid[..., 0], grid[..., 1]
    # content spans X in [0, cw]: normalized [-1, 2 cw / W - 1]; edge pixel centres 0.5 and cw - 0.5
    right = (2.0 * content_w / width - 1.0)[:, None, None]
    bottom = (2.0 * content_h / height - 1.0)[:, None, None]
    visible = (gx >= -1.0) & (gx <= right) & (gy >= -1.0) & (gy <= bottom)
    gx = torch.minimum(gx.clamp(min=1.0 / width - 1.0), right - 1.0 / width)
    gy = torch.minimum(gy.clamp(min=1.0 / height - 1.0), bottom - 1.0 / height)
    grid = torch.stack([gx, gy], dim=-1)
    return torch.where(visible[..., None], grid, torch.full_like(grid, _OUTSIDE))


def _transform_boxes(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    scale: torch.Tensor,
    flip: torch.Tensor,
    x0: torch.Tensor,
    y0: torch.Tensor,
    content_hw: torch.Tensor,
    size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale, flip, shift, clip and drop boxes exactly like TrainTransform; shapes are kept."""
    s = scale[:, None]
    scaled_w = s * content_hw[:, 1:2]
    x1, y1, x2, y2 = (boxes[..., i] * s for i in range(4))
    flip_m = flip[:, None]
    x1, x2 = torch.where(flip_m, scaled_w - x2, x1), torch.where(flip_m, scaled_w - x1, x2)
    x1, x2 = x1 - x0[:, None], x2 - x0[:, None]
    y1, y2 = y1 - y0[:, None], y2 - y0[:, None]
    area = (x2 - x1) * (y2 - y1)
    visible_w = (scaled_w - x0[:, None]).clamp(max=float(size[1]))
    visible_h = (s * content_hw[:, 0:1] - y0[:, None]).clamp(max=float(size[0]))
    x1, x2 = (torch.minimum(v.clamp(min=0.0), visible_w) for v in (x1, x2))
    y1, y2 = (torch.minimum(v.clamp(min=0.0), visible_h) for v in (y1, y2))
    box_w, box_h = x2 - x1, y2 - y1
    keep = (
        (labels != PAD_LABEL)
        & (box_w * box_h >= MIN_KEPT_AREA_FRACTION * area)
        & (box_w >= MIN_BOX_SIDE)
        & (box_h >= MIN_BOX_SIDE)
    )
    out_boxes = torch.stack([x1, y1, x2, y2], dim=-1)
    out_boxes = torch.where(keep[..., None], out_boxes, torch.zeros_like(out_boxes))
    out_labels = torch.where(keep, labels, torch.full_like(labels, PAD_LABEL))
    return out_boxes, out_labels


def augment_batch(
    images_uint8: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    content_hw: torch.Tensor,
    *,
    size: tuple[int, int],
    augment: DeviceAugment,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vectorized :class:`~effscale.detector.data.transforms.TrainTransform` on the images' device.

    Per image, with ``(ch, cw)`` its content size and ``(H, W) = size``: draw
    ``s ~ U(augment.scale_range)``, flip with probability ``augment.hflip_prob`` (``x -> s * cw - x``)
    and crop offsets ``x0 ~ U[0, max(0, s * cw - W)]``, ``y0 ~ U[0, max(0, s * ch - H)]``
    (continuous). Output pixel ``(u, v)`` bilinearly samples the canvas at
    ``((u + 0.5 + x0) / s, (v + 0.5 + y0) / s)`` in continuous pixels (``x`` mirrored inside the
    content when flipped); outside the content it is 0, as TrainTransform pads with 0. Boxes get
    the same map, are clipped to the visible content ``[0, min(W, s * cw - x0)] x
    [0, min(H, s * ch - y0)]`` and dropped (label -1, box 0) when they keep less than 25% of their
    area or a side is under 2 px. Shapes never change and no value is read back to the host.

    Args:
        images_uint8: ``torch.uint8`` ``[B, 3, H, W]`` letterboxed canvases (content at top-left).
        boxes: ``torch.float32`` ``[B, M, 4]`` ``(x1, y1, x2, y2)`` in canvas pixels.
        labels: ``torch.int64`` ``[B, M]``, ``-1`` for padding rows.
        content_hw: ``torch.float32`` ``[B, 2]`` ``(height, width)`` of each content, pixels.
        size: ``(H, W)`` of the canvases, pixels.
        augment: the augmentation ranges.
        generator: generator on the images' device for the draw; ``None`` uses torch's default
            generator (the only choice inside ``torch.compile``).
        uniforms: ``float32`` ``[B, 4]`` in ``[0, 1)`` to use instead of drawing (columns: scale,
            flip, crop x, crop y; see :func:`draw_augment_uniforms`); excludes ``generator``.

    Returns:
        ``(images, boxes, labels)``: ``float32`` ``[B, 3, H, W]`` ImageNet-normalized (as
        :func:`~effscale.detector.data.transforms.normalize`), ``float32`` ``[B, M, 4]`` canvas pixels
        (0 where dropped or padded), ``int64`` ``[B, M]`` (``-1`` where dropped or padded).

    Raises:
        DataError: wrong dtypes, shapes or devices, or both ``generator`` and ``uniforms``.
    """
    size = _check_size(size, "augment_batch size")
    if not isinstance(augment, DeviceAugment):
        raise DataError(
            f"augment_batch augment must be a DeviceAugment, got {type(augment).__name__}"
        )
    _check_batch(images_uint8, boxes, labels, content_hw, size)
    count = images_uint8.shape[0]
    if uniforms is None:
        uniforms = draw_augment_uniforms(count, device=images_uint8.device, generator=generator)
    elif generator is not None:
        raise DataError("augment_batch got both generator and uniforms; pass one of them")
    elif (
        not isinstance(uniforms, torch.Tensor)
        or uniforms.dtype != torch.float32
        or tuple(uniforms.shape) != (count, _UNIFORMS_PER_IMAGE)
        or uniforms.device != images_uint8.device
    ):
        raise DataError(
            f"augment_batch uniforms must be float32 [B, 4] on the images' device, got {_describe(uniforms)}"
        )

    scale, flip, x0, y0 = _draw_geometry(uniforms, content_hw, size, augment)
    grid = _sample_grid(scale, flip, x0, y0, content_hw, size)
    images = F.grid_sample(
        images_uint8.to(torch.float32),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    out_boxes, out_labels = _transform_boxes(boxes, labels, scale, flip, x0, y0, content_hw, size)
    return _normalize_float(images), out_boxes, out_labels


# ---------------------------------------------------------------------------- the cache
def _letterboxed(dataset: Any, size: tuple[int, int]) -> Any:
    """A shallow copy of ``dataset`` (or of the dataset under a ``Subset``) with ``ResizePad(size)``."""
    if isinstance(dataset, Subset):
        return Subset(_letterboxed(dataset.dataset, size), dataset.indices)
    if not hasattr(dataset, "transform") or not hasattr(dataset, "__getitem__"):
        raise DataError(
            f"DeviceCache.from_dataset needs a CocoDetection (or a torch Subset of one), got "
            f"{type(dataset).__name__}; open the split with load_split"
        )
    view = copy.copy(dataset)
    view.transform = ResizePad(size)
    return view


def _collate_canvases(items: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    return torch.stack([image for image, _ in items]), [target for _, target in items]


def _content_hw(target: dict, size: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of the resized image inside the ResizePad canvas, pixels."""
    height, width = (int(v) for v in target["orig_size"])
    return _resized_shape(height, width, _fit_ratio(height, width, size))


def _check_room(device: torch.device, needed: int) -> None:
    if device.type != "cuda":
        return
    free, _ = torch.cuda.mem_get_info(device)
    if needed > free:
        raise DataError(
            f"the device cache needs {needed / 2**30:.2f} GiB but {device} has {free / 2**30:.2f} GiB free; "
            "cache fewer images (subset), use a smaller size, or cache on 'cpu'"
        )


class _Progress:
    """A rich progress bar over decoded images, or nothing."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self._bar = None
        if enabled:
            self._bar = Progress(
                TextColumn("[bold]cache"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=True,
            )
            self._task = self._bar.add_task("cache", total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, count)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


class DeviceCache:
    """A split's images letterboxed to ``size`` and kept on ``device``, with padded targets.

    Attributes:
        images: ``torch.uint8`` ``[N, 3, H, W]`` canvases with the :class:`ResizePad` geometry
            (content at the top-left, 0 elsewhere).
        boxes: ``torch.float32`` ``[N, M, 4]`` ``(x1, y1, x2, y2)`` in canvas pixels, 0 where padded.
        labels: ``torch.int64`` ``[N, M]`` contiguous labels, ``-1`` where padded.
        content_hw: ``torch.float32`` ``[N, 2]`` ``(height, width)`` of the resized image inside
            the canvas, pixels.

    ``M`` (:attr:`max_objects`) is the largest object count of the split rounded up to a multiple
    of :data:`~effscale.detector.data.loader.OBJECTS_MULTIPLE` (at least that), fixed for the whole run.
    Build one with :meth:`from_dataset`; the constructor takes ready tensors.

    Raises:
        DataError: tensors of the wrong dtype, shape or device.
    """

    def __init__(
        self,
        images: torch.Tensor,
        boxes: torch.Tensor,
        labels: torch.Tensor,
        content_hw: torch.Tensor,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise DataError(
                f"DeviceCache images must be uint8 [N, 3, H, W], got {_describe(images)}"
            )
        size = (int(images.shape[2]), int(images.shape[3]))
        _check_batch(images, boxes, labels, content_hw, size, "DeviceCache")
        if labels.shape[1] < OBJECTS_MULTIPLE or labels.shape[1] % OBJECTS_MULTIPLE:
            raise DataError(
                f"DeviceCache max objects M={labels.shape[1]} must be a positive multiple of {OBJECTS_MULTIPLE}; "
                "pad boxes and labels (labels with -1)"
            )
        self.images = images
        self.boxes = boxes
        self.labels = labels
        self.content_hw = content_hw
        imagenet_constants(images.device)  # made now, before any CUDA-graph capture

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        *,
        size: tuple[int, int] | int,
        device: torch.device | str,
        batch_decode: int = 64,
        num_workers: int = 0,
        quiet: bool = False,
    ) -> DeviceCache:
        """Decode every image of ``dataset`` on the CPU with ``ResizePad(size)`` and cache it on ``device``.

        Args:
            dataset: a :class:`~effscale.detector.data.coco.CocoDetection` (or a ``torch`` ``Subset`` of
                one); its own ``transform`` is ignored, the dataset itself is not modified.
            size: canvas ``(H, W)`` in pixels (an int means square).
            device: where the cache lives.
            batch_decode: images decoded and copied to the device per chunk.
            num_workers: decoding worker processes (0 decodes in this process).
            quiet: no progress bar (one is shown for more than :data:`PROGRESS_MIN_IMAGES` images).

        Raises:
            DataError: the dataset is empty or not a COCO dataset, a bad argument, or (CUDA) the
                images do not fit in the free device memory.
        """
        size = _check_size(size, "DeviceCache size")
        batch_decode = _check_positive_int(batch_decode, "batch_decode")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise DataError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        count = len(dataset)
        if count == 0:
            raise DataError(
                "DeviceCache.from_dataset got a dataset with no images; check the dataset folder and subset"
            )
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DataError(f"DeviceCache device {device} is not available; use device='cpu'")
        view = _letterboxed(dataset, size)
        _check_room(device, cache_nbytes(count, size, OBJECTS_MULTIPLE))

        images = torch.empty((count, 3, *size), dtype=torch.uint8, device=device)
        targets: list[tuple[torch.Tensor, torch.Tensor]] = []
        content: list[tuple[int, int]] = []
        loader = DataLoader(
            view,
            batch_size=batch_decode,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_collate_canvases,
        )
        start = 0
        with _Progress(count, enabled=not quiet and count > PROGRESS_MIN_IMAGES) as progress:
            for chunk, chunk_targets in loader:
                images[start : start + len(chunk)].copy_(chunk)
                start += len(chunk)
                for target in chunk_targets:
                    targets.append((target["boxes"].reshape(-1, 4), target["labels"].reshape(-1)))
                    content.append(_content_hw(target, size))
                progress.advance(len(chunk))

        padded = padded_object_count(max(len(labels) for _, labels in targets))
        boxes = torch.zeros((count, padded, 4), dtype=torch.float32)
        labels = torch.full((count, padded), PAD_LABEL, dtype=torch.int64)
        for i, (item_boxes, item_labels) in enumerate(targets):
            boxes[i, : len(item_labels)] = item_boxes
            labels[i, : len(item_labels)] = item_labels
        content_hw = torch.tensor(content, dtype=torch.float32).reshape(count, 2)
        return cls(images, boxes.to(device), labels.to(device), content_hw.to(device))

    # ------------------------------------------------------------------ sizes
    @property
    def num_images(self) -> int:
        """Number of cached images ``N``."""
        return int(self.images.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """Canvas ``(H, W)`` in pixels."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def max_objects(self) -> int:
        """Padded object count ``M`` of every batch."""
        return int(self.labels.shape[1])

    @property
    def device(self) -> torch.device:
        """Where the cache lives."""
        return self.images.device

    @property
    def nbytes(self) -> int:
        """Bytes held on :attr:`device` (equals :func:`cache_nbytes` of this cache)."""
        return sum(
            t.numel() * t.element_size()
            for t in (self.images, self.boxes, self.labels, self.content_hw)
        )

    # ------------------------------------------------------------------ batches
    def batch(
        self,
        indices: torch.Tensor,
        *,
        augment: DeviceAugment | None = None,
        generator: torch.Generator | None = None,
        uniforms: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gather images ``indices`` and (optionally) augment them, without host synchronization.

        Args:
            indices: ``torch.int64`` ``[B]`` on :attr:`device`, each in ``0..N-1`` (repeats allowed).
            augment: :func:`augment_batch` ranges; ``None`` returns the letterboxed canvases as is.
            generator: generator on :attr:`device` for the augmentation draw (``None``: torch's
                default generator); ignored without ``augment``.
            uniforms: ``float32`` ``[B, 4]`` to use instead of drawing (see :func:`augment_batch`).

        Returns:
            ``(images, boxes, labels)``: ``float32`` ``[B, 3, H, W]`` ImageNet-normalized,
            ``float32`` ``[B, M, 4]`` ``(x1, y1, x2, y2)`` canvas pixels, ``int64`` ``[B, M]`` with
            ``-1`` for padding (and for boxes the augmentation dropped).

        Raises:
            DataError: ``indices`` is not ``int64`` ``[B]`` on :attr:`device`.
        """
        if (
            not isinstance(indices, torch.Tensor)
            or indices.dtype != torch.int64
            or indices.ndim != 1
            or indices.device != self.device
        ):
            raise DataError(
                f"DeviceCache.batch indices must be int64 [B] on {self.device}, got {_describe(indices)}"
            )
        images = self.images.index_select(0, indices)
        boxes = self.boxes.index_select(0, indices)
        labels = self.labels.index_select(0, indices)
        if augment is None:
            return _normalize_float(images.to(torch.float32)), boxes, labels
        content_hw = self.content_hw.index_select(0, indices)
        return augment_batch(
            images,
            boxes,
            labels,
            content_hw,
            size=self.size,
            augment=augment,
            generator=generator,
            uniforms=uniforms,
        )

    def __repr__(self) -> str:
        return (
            f"DeviceCache(images={self.num_images}, size={self.size}, max_objects={self.max_objects}, "
            f"device={self.device}, nbytes={self.nbytes})"
        )
