"""EfficientDet anchors, feature-map sizes, and flattening of per-level head outputs.

Anchor order
------------
All ``N`` anchors of an image are concatenated **level → y → x → anchor**: levels ascend from
``min_level`` to ``max_level``; within a level, rows (y) are outer and columns (x) inner; at
each location the ``A = num_scales * len(aspect_ratios)`` anchors run over octave scales
(outer) × aspect ratios (inner), i.e. anchor index ``a = scale_index * len(aspect_ratios) +
ratio_index``. :func:`flatten_outputs` puts the head outputs in exactly this order, so row ``n``
of the flattened logits/regressions belongs to row ``n`` of :func:`generate_anchors`.

Geometry (the official google/automl release)
---------------------------------------------
Level ``l`` has feature size ``(H_l, W_l)``, obtained from the input ``(H, W)`` by ``l``
ceil-halvings. Its stride per axis is ``H / H_l`` and ``W / W_l`` pixels, which equals
``2**l`` whenever the side is divisible by ``2**l`` (always for D0-D7); otherwise the official
code stretches the grid over the image, and so do we. Anchor centres are
``stride / 2 + i * stride``; the anchor of octave scale ``s`` and ratio ``(rw, rh)`` has width
``anchor_scale * stride_x * 2**(s / num_scales) * rw`` and height
``anchor_scale * stride_y * 2**(s / num_scales) * rh`` pixels.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .config import AnchorConfig, DetectorConfig

__all__ = [
    "check_flat_outputs",
    "feature_sizes",
    "num_anchors_total",
    "generate_anchors",
    "cached_anchors",
    "Anchors",
    "flatten_outputs",
]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(value: object) -> object:
    """The shape of a tensor (for error messages), or the type name of anything else."""
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def check_flat_outputs(
    cls_outputs: object, box_outputs: object, anchors: object, *, num_classes: int | None = None
) -> tuple[int, int, int]:
    """Check the flattened head outputs against each other and the anchors.

    Expects ``cls_outputs`` Tensor[B, N, C] (C = ``num_classes`` when given), ``box_outputs``
    Tensor[B, N, 4] and ``anchors`` Tensor[N, 4]; returns ``(B, N, C)`` or raises a
    ``ValueError`` that names the argument and the expected shape.
    """
    c = "C" if num_classes is None else str(num_classes)
    if (
        not isinstance(cls_outputs, Tensor)
        or cls_outputs.dim() != 3
        or (num_classes is not None and cls_outputs.shape[2] != num_classes)
    ):
        raise ValueError(f"cls_outputs: expected shape [B, N, {c}], got {_describe(cls_outputs)}")
    batch, num_anchors, classes = cls_outputs.shape
    if not isinstance(box_outputs, Tensor) or tuple(box_outputs.shape) != (batch, num_anchors, 4):
        raise ValueError(
            f"box_outputs: expected shape [{batch}, {num_anchors}, 4] (B, N, 4), "
            f"got {_describe(box_outputs)}"
        )
    if not isinstance(anchors, Tensor) or tuple(anchors.shape) != (num_anchors, 4):
        raise ValueError(
            f"anchors: expected shape [{num_anchors}, 4] (N, 4), got {_describe(anchors)}"
        )
    return batch, num_anchors, classes


def _check_image_size(image_size: object) -> tuple[int, int]:
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(_is_int(v) and v > 0 for v in image_size)
    ):
        raise ValueError(
            "image_size: expected (height, width) as two positive ints (pixels), "
            f"got {image_size!r}"
        )
    return int(image_size[0]), int(image_size[1])


def _check_levels(min_level: object, max_level: object) -> None:
    if not (
        isinstance(min_level, int)
        and isinstance(max_level, int)
        and _is_int(min_level)
        and _is_int(max_level)
        and 0 <= min_level <= max_level <= 16
    ):
        raise ValueError(
            "min_level/max_level: expected ints with 0 <= min_level <= max_level <= 16, "
            f"got min_level={min_level!r}, max_level={max_level!r}"
        )


def feature_sizes(
    image_size: Sequence[int], min_level: int = 3, max_level: int = 7
) -> list[tuple[int, int]]:
    """Feature-map sizes of the pyramid levels ``min_level .. max_level`` (inclusive).

    Each level halves the previous one with rounding up (``(s - 1) // 2 + 1``, i.e. a stride-2
    conv or pool with ``same`` padding), starting from the input, so level ``l`` has
    ``ceil(H / 2**l)`` rows and ``ceil(W / 2**l)`` columns.

    Args:
        image_size ((int, int)): input ``(height, width)`` in pixels.
        min_level (int): finest level (stride ``2**min_level``).
        max_level (int): coarsest level (inclusive).

    Returns:
        list[(int, int)]: ``(H_l, W_l)`` per level, in ascending level order.
    """
    height, width = _check_image_size(image_size)
    _check_levels(min_level, max_level)
    sizes = []
    for level in range(max_level + 1):
        if level >= min_level:
            sizes.append((height, width))
        height, width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    return sizes


def num_anchors_total(
    anchor_config: AnchorConfig, image_size: Sequence[int], min_level: int = 3, max_level: int = 7
) -> int:
    """``N``, the number of anchors of one image: ``A * sum(H_l * W_l)`` over the levels."""
    _check_anchor_config(anchor_config)
    sizes = feature_sizes(image_size, min_level, max_level)
    return anchor_config.num_anchors * sum(h * w for h, w in sizes)


def _check_anchor_config(anchor_config: object) -> None:
    if not isinstance(anchor_config, AnchorConfig):
        raise ValueError(
            f"anchor_config: expected an AnchorConfig, got {type(anchor_config).__name__}"
        )


def generate_anchors(
    anchor_config: AnchorConfig,
    image_size: Sequence[int],
    min_level: int = 3,
    max_level: int = 7,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """All anchors of one input image, in the order documented in the module docstring.

    The geometry is computed in float64 on the CPU (bit-compatible with the official numpy code)
    and then cast and moved once. Use :func:`cached_anchors` or :class:`Anchors` in training
    loops instead of calling this every step.

    Args:
        anchor_config (AnchorConfig): octave scales, ``(w, h)`` aspect-ratio factors and
            ``anchor_scale`` (base side in strides).
        image_size ((int, int)): input ``(height, width)`` in pixels.
        min_level (int): finest pyramid level.
        max_level (int): coarsest pyramid level (inclusive).
        device: where the returned tensor lives (default: CPU).
        dtype (torch.dtype): floating dtype of the result (default float32).

    Returns:
        anchors (Tensor[N, 4]): ``(x1, y1, x2, y2)`` in input-image pixels (not clipped), with
        ``N = num_anchors_total(anchor_config, image_size, min_level, max_level)``.
    """
    _check_anchor_config(anchor_config)
    height, width = _check_image_size(image_size)
    sizes = feature_sizes((height, width), min_level, max_level)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")

    num_scales = anchor_config.num_scales
    # Per-anchor half sides in strides, scales outer x ratios inner: [A] each.
    half_w_units = []
    half_h_units = []
    for scale_index in range(num_scales):
        octave = 2 ** (scale_index / float(num_scales))
        for ratio_w, ratio_h in anchor_config.aspect_ratios:
            half_w_units.append(anchor_config.anchor_scale * octave * ratio_w / 2.0)
            half_h_units.append(anchor_config.anchor_scale * octave * ratio_h / 2.0)
    half_w_units_t = torch.tensor(half_w_units, dtype=torch.float64)
    half_h_units_t = torch.tensor(half_h_units, dtype=torch.float64)

    per_level = []
    for feat_h, feat_w in sizes:
        stride_y = height / float(feat_h)
        stride_x = width / float(feat_w)
        cy = stride_y / 2 + torch.arange(feat_h, dtype=torch.float64) * stride_y  # [H_l]
        cx = stride_x / 2 + torch.arange(feat_w, dtype=torch.float64) * stride_x  # [W_l]
        half_h = half_h_units_t * stride_y  # [A]
        half_w = half_w_units_t * stride_x  # [A]
        cy = cy[:, None, None]
        cx = cx[None, :, None]
        boxes = torch.stack(
            torch.broadcast_tensors(cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1
        )  # [H_l, W_l, A, 4]
        per_level.append(boxes.reshape(-1, 4))
    return torch.cat(per_level, dim=0).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _cached(
    anchor_config: AnchorConfig,
    image_size: tuple[int, int],
    min_level: int,
    max_level: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    return generate_anchors(
        anchor_config, image_size, min_level, max_level, device=device, dtype=dtype
    )


def cached_anchors(
    anchor_config: AnchorConfig,
    image_size: Sequence[int],
    min_level: int = 3,
    max_level: int = 7,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """:func:`generate_anchors`, memoized on (config, size, levels, device, dtype).

    Returns the same tensor object on every call with equal arguments, so a training loop can
    call it each step for free. The tensor is shared: **do not modify it in place**.

    Returns:
        anchors (Tensor[N, 4]): ``(x1, y1, x2, y2)`` in input-image pixels.
    """
    _check_anchor_config(anchor_config)
    size = _check_image_size(image_size)
    _check_levels(min_level, max_level)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return _cached(anchor_config, size, min_level, max_level, dev, dtype)


class Anchors(nn.Module):
    """The anchors of one model as a non-persistent buffer (moves with ``.to(device)``).

    Not saved in ``state_dict`` (they are a pure function of the config).

    Args:
        anchor_config (AnchorConfig): the anchor shapes.
        image_size ((int, int)): input ``(height, width)`` in pixels.
        min_level (int): finest pyramid level.
        max_level (int): coarsest pyramid level (inclusive).

    Attributes:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)`` anchors in input pixels, float32.
    """

    boxes: Tensor

    def __init__(
        self,
        anchor_config: AnchorConfig,
        image_size: Sequence[int],
        min_level: int = 3,
        max_level: int = 7,
    ) -> None:
        super().__init__()
        self.anchor_config = anchor_config
        self.image_size = _check_image_size(image_size)
        self.min_level = min_level
        self.max_level = max_level
        self.feature_sizes = feature_sizes(self.image_size, min_level, max_level)
        self.register_buffer(
            "boxes",
            generate_anchors(anchor_config, self.image_size, min_level, max_level),
            persistent=False,
        )

    @classmethod
    def from_config(cls, config: DetectorConfig) -> Anchors:
        """The anchors of a :class:`~effscale.detector.config.DetectorConfig`."""
        if not isinstance(config, DetectorConfig):
            raise ValueError(f"config: expected a DetectorConfig, got {type(config).__name__}")
        return cls(config.anchors, config.image_size, config.min_level, config.max_level)

    @property
    def num_anchors_per_location(self) -> int:
        """``A``, anchors per feature-map location."""
        return self.anchor_config.num_anchors

    def forward(self) -> Tensor:
        """Returns ``boxes``: Tensor[N, 4], ``(x1, y1, x2, y2)`` in input pixels."""
        return self.boxes

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, levels={self.min_level}..{self.max_level}, "
            f"num_anchors={self.boxes.shape[0]}"
        )


def flatten_outputs(
    cls_per_level: Sequence[Tensor], box_per_level: Sequence[Tensor], num_classes: int
) -> tuple[Tensor, Tensor]:
    """Concatenate per-level head outputs into per-anchor rows in anchor order.

    Channel ``a * C + c`` of a level's class output is anchor ``a``, class ``c``; channel
    ``a * 4 + k`` of its box output is anchor ``a``, delta ``k`` (``dy, dx, dh, dw``). Each level
    is permuted to ``[B, H_l, W_l, A, ·]`` and the levels are concatenated, so the rows follow
    :func:`generate_anchors` (level → y → x → anchor).

    Args:
        cls_per_level (sequence of Tensor[B, A*C, H_l, W_l]): class logits per level,
            finest first.
        box_per_level (sequence of Tensor[B, A*4, H_l, W_l]): box regressions per level.
        num_classes (int): ``C``.

    Returns:
        cls (Tensor[B, N, C]): logits, ``N = sum(H_l * W_l * A)``, dtype unchanged.
        box (Tensor[B, N, 4]): ``(dy, dx, dh, dw)`` regressions, dtype unchanged.
    """
    if not (_is_int(num_classes) and num_classes >= 1):
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
    if len(cls_per_level) == 0 or len(cls_per_level) != len(box_per_level):
        raise ValueError(
            "cls_per_level/box_per_level: expected equally long, non-empty sequences of "
            f"per-level tensors, got {len(cls_per_level)} and {len(box_per_level)}"
        )
    cls_rows = []
    box_rows = []
    batch = None
    for index, (cls, box) in enumerate(zip(cls_per_level, box_per_level)):
        if not isinstance(cls, Tensor) or cls.dim() != 4 or cls.shape[1] % num_classes != 0:
            raise ValueError(
                f"cls_per_level[{index}]: expected shape [B, A*{num_classes}, H, W], "
                f"got {_describe(cls)}"
            )
        num_anchors = cls.shape[1] // num_classes
        b, _, h, w = cls.shape
        if not isinstance(box, Tensor) or tuple(box.shape) != (b, num_anchors * 4, h, w):
            raise ValueError(
                f"box_per_level[{index}]: expected shape [{b}, {num_anchors * 4}, {h}, {w}] "
                f"(B, A*4, H, W), got "
                f"{_describe(box)}"
            )
        if batch is None:
            batch = b
        elif b != batch:
            raise ValueError(
                f"cls_per_level[{index}]: batch size {b} differs from level 0's {batch}"
            )
        cls_rows.append(cls.permute(0, 2, 3, 1).reshape(b, h * w * num_anchors, num_classes))
        box_rows.append(box.permute(0, 2, 3, 1).reshape(b, h * w * num_anchors, 4))
    return torch.cat(cls_rows, dim=1), torch.cat(box_rows, dim=1)
