"""Detection transforms: PIL RGB image + target in, ``uint8`` canvas + target out.

Both transforms follow the protocol of :mod:`effscale.detector.data.coco`: ``transform(image, target)``
takes a PIL image (or a ``uint8`` ``[3, H, W]`` tensor) and a target whose ``boxes`` are
``float32`` ``[N, 4]`` ``(x1, y1, x2, y2)`` in the input's pixels, and returns
``(canvas, target)`` where ``canvas`` is a ``torch.uint8`` ``[3, H, W]`` tensor of exactly
``size = (H, W)`` and ``boxes``/``labels`` are expressed in canvas pixels.

Images stay ``uint8`` through loading and collation; call :func:`normalize` on the device.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from .coco import DataError, pil_to_tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ResizePad",
    "TrainTransform",
    "normalize",
    "imagenet_constants",
]

#: ImageNet RGB mean, in [0, 1] units
IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: ImageNet RGB standard deviation, in [0, 1] units
IMAGENET_STD = (0.229, 0.224, 0.225)

#: a box is kept after cropping only if it keeps at least this fraction of its area ...
MIN_KEPT_AREA_FRACTION = 0.25
#: ... and both sides are at least this many pixels
MIN_BOX_SIDE = 2.0


def _check_size(size: Any, field: str) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise DataError(f"{field} must be (height, width) in positive integer pixels, got {size!r}")
    return int(size[0]), int(size[1])


def _to_pil(image: Image.Image | torch.Tensor) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise DataError(
                f"image tensor must be uint8 [3, H, W], got {str(image.dtype).removeprefix('torch.')} "
                f"{list(image.shape)}; load images with CocoDetection"
            )
        return Image.fromarray(image.permute(1, 2, 0).contiguous().cpu().numpy())
    raise DataError(
        f"image must be a PIL image or a uint8 [3, H, W] tensor, got {type(image).__name__}"
    )


def _fit_ratio(height: int, width: int, size: tuple[int, int]) -> float:
    return min(size[0] / height, size[1] / width)


def _resized_shape(height: int, width: int, ratio: float) -> tuple[int, int]:
    return max(1, int(round(height * ratio))), max(1, int(round(width * ratio)))


def _paste(content: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """Put ``content`` (at most ``size``) at the top-left of a zero ``uint8`` ``[3, H, W]`` canvas."""
    tensor = pil_to_tensor(content)
    if tuple(tensor.shape[1:]) == size:
        return tensor
    canvas = torch.zeros((3, size[0], size[1]), dtype=torch.uint8)
    canvas[:, : tensor.shape[1], : tensor.shape[2]] = tensor
    return canvas


class ResizePad:
    """Deterministic letterbox: resize keeping the aspect ratio to fit inside ``size``, pad with 0.

    The image is resized by ``r = min(H / h, W / w)`` (bilinear) to
    ``(round(h * r), round(w * r))``, placed at the top-left of a zero canvas of ``size = (H, W)``
    (padding bottom/right), and boxes are multiplied by ``r``. ``target["scale"]`` becomes
    ``scale_in / r`` so that ``original_boxes = boxes * scale``.

    Args:
        size: output ``(H, W)`` in pixels (an int means square); the detector needs multiples of 8.
    """

    def __init__(self, size: tuple[int, int] | int) -> None:
        self.size = _check_size(size, "ResizePad size")

    def __call__(
        self, image: Image.Image | torch.Tensor, target: dict
    ) -> tuple[torch.Tensor, dict]:
        """Return ``(uint8 [3, H, W] canvas, target)`` with boxes in canvas pixels."""
        pil = _to_pil(image)
        width, height = pil.size
        ratio = _fit_ratio(height, width, self.size)
        new_h, new_w = _resized_shape(height, width, ratio)
        if (new_w, new_h) != (width, height):
            pil = pil.resize((new_w, new_h), Image.Resampling.BILINEAR)
        canvas = _paste(pil, self.size)
        out = dict(target)
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4) * ratio
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_h)
        out["boxes"] = boxes
        out["labels"] = torch.as_tensor(target["labels"], dtype=torch.int64).reshape(-1)
        out["scale"] = float(target.get("scale", 1.0)) / ratio
        return canvas, out

    def __repr__(self) -> str:
        return f"ResizePad(size={self.size})"


class TrainTransform:
    """Training augmentation: random scale jitter, random crop/pad to ``size``, random h-flip.

    Steps, for an input of ``h x w`` pixels and ``size = (H, W)``:

    1. draw ``s ~ U(scale_range)`` and resize by ``r = min(H / h, W / w) * s`` (bilinear);
    2. flip left-right with probability ``hflip_prob`` (``x -> new_w - x``);
    3. crop a random ``H x W`` window where the resized image is larger, pad bottom/right with 0
       where it is smaller;
    4. clip boxes to the visible image and drop boxes that keep less than 25% of their area or
       whose width or height is under 2 pixels.

    ``target["scale"]`` becomes ``scale_in / r`` (the crop offset and flip are not undone by it).

    Randomness comes from a private :class:`random.Random` seeded with ``seed``: the same seed
    gives the same sequence of augmentations on any machine. :func:`~effscale.detector.data.loader.make_loader`
    calls :meth:`reseed` in every worker so that workers draw different streams.

    Args:
        size: output ``(H, W)`` in pixels (an int means square); the detector needs multiples of 8.
        scale_range: ``(low, high)`` multipliers of the fit-inside ratio, ``0 < low <= high``.
        hflip_prob: probability of a horizontal flip, in ``[0, 1]``.
        seed: seed of the random stream.
    """

    def __init__(
        self,
        size: tuple[int, int] | int,
        *,
        scale_range: tuple[float, float] = (0.8, 1.2),
        hflip_prob: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.size = _check_size(size, "TrainTransform size")
        if (
            not isinstance(scale_range, Sequence)
            or len(scale_range) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale_range)
            or not 0 < scale_range[0] <= scale_range[1] < float("inf")
        ):
            raise DataError(
                f"TrainTransform scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}"
            )
        if (
            isinstance(hflip_prob, bool)
            or not isinstance(hflip_prob, (int, float))
            or not 0.0 <= hflip_prob <= 1.0
        ):
            raise DataError(
                f"TrainTransform hflip_prob must be a probability in [0, 1], got {hflip_prob!r}"
            )
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip_prob = float(hflip_prob)
        self.seed = int(seed)
        self._rng = random.Random(self.seed)

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed`` (called once per DataLoader worker)."""
        self.seed = int(seed)
        self._rng = random.Random(self.seed)

    def __call__(
        self, image: Image.Image | torch.Tensor, target: dict
    ) -> tuple[torch.Tensor, dict]:
        """Return ``(uint8 [3, H, W] canvas, target)`` with boxes in canvas pixels."""
        rng = self._rng
        out_h, out_w = self.size
        pil = _to_pil(image)
        width, height = pil.size

        # fixed draw order: scale, flip, crop x, crop y
        ratio = _fit_ratio(height, width, self.size) * rng.uniform(*self.scale_range)
        flip = rng.random() < self.hflip_prob
        new_h, new_w = _resized_shape(height, width, ratio)
        x0 = rng.randint(0, new_w - out_w) if new_w > out_w else 0
        y0 = rng.randint(0, new_h - out_h) if new_h > out_h else 0

        if (new_w, new_h) != (width, height):
            pil = pil.resize((new_w, new_h), Image.Resampling.BILINEAR)
        if flip:
            pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        visible_w, visible_h = min(out_w, new_w - x0), min(out_h, new_h - y0)
        if (x0, y0, visible_w, visible_h) != (0, 0, new_w, new_h):
            pil = pil.crop((x0, y0, x0 + visible_w, y0 + visible_h))
        canvas = _paste(pil, self.size)

        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4) * ratio
        labels = torch.as_tensor(target["labels"], dtype=torch.int64).reshape(-1)
        if flip:
            boxes = torch.stack(
                [new_w - boxes[:, 2], boxes[:, 1], new_w - boxes[:, 0], boxes[:, 3]], dim=1
            )
        boxes = boxes - torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, visible_w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, visible_h)
        box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep = (
            (box_w * box_h >= MIN_KEPT_AREA_FRACTION * area)
            & (box_w >= MIN_BOX_SIDE)
            & (box_h >= MIN_BOX_SIDE)
        )

        out = dict(target)
        out["boxes"] = boxes[keep].contiguous()
        out["labels"] = labels[keep].contiguous()
        out["scale"] = float(target.get("scale", 1.0)) / ratio
        return canvas, out

    def __repr__(self) -> str:
        return (
            f"TrainTransform(size={self.size}, scale_range={self.scale_range}, "
            f"hflip_prob={self.hflip_prob}, seed={self.seed})"
        )


def normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalize ``uint8`` images on their own device.

    Args:
        images: ``torch.uint8`` ``[B, 3, H, W]`` (or ``[3, H, W]``) RGB in ``0..255``, any device.

    Returns:
        ``torch.float32`` tensor of the same shape and device: ``(images / 255 - mean) / std`` with
        :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD` per channel.

    Raises:
        DataError: ``images`` is not ``uint8`` with 3 channels at dim -3.
    """
    if (
        not isinstance(images, torch.Tensor)
        or images.dtype != torch.uint8
        or images.ndim not in (3, 4)
        or images.shape[-3] != 3
    ):
        described = (
            f"{str(images.dtype).removeprefix('torch.')} {list(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise DataError(
            f"normalize expects uint8 images [B, 3, H, W], got {described}; normalize once, on the device"
        )
    mean, inv_std = imagenet_constants(images.device)
    return images.to(torch.float32).sub_(mean).mul_(inv_std)


#: memo of :func:`imagenet_constants`, one entry per device (a cache, not configuration)
_CONSTANTS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def imagenet_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, 1 / std)`` float32 ``[3, 1, 1]`` in ``0..255`` units on ``device``, made once per
    device: a host-to-device copy per call would sync, and is illegal inside CUDA-graph capture.
    (A dict rather than ``functools.lru_cache``, which Dynamo traces through.)"""
    constants = _CONSTANTS.get(device)
    if constants is None:
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).mul_(255.0)
        inv_std = (
            torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device).mul_(255.0).reciprocal_()
        )
        constants = _CONSTANTS[device] = (mean.view(3, 1, 1), inv_std.view(3, 1, 1))
    return constants
