"""Faster R-CNN box coding between absolute boxes and anchor-relative deltas.

Boxes are ``(x1, y1, x2, y2)`` in input-image pixels. Deltas are in the order of the official
EfficientDet release, ``(dy, dx, dh, dw)``, with no scale factors::

    dy = (cy - cy_a) / h_a        dx = (cx - cx_a) / w_a
    dh = log(h / h_a)             dw = log(w / w_a)

where ``(cx, cy, w, h)`` are the box's centre and size and ``(cx_a, cy_a, w_a, h_a)`` the
anchor's. The box head's 4 channels per anchor regress exactly these deltas, so a checkpoint of
the official model (whose box channels are ``ty, tx, th, tw``) needs no permutation.

Both functions compute in at least float32 (bf16/fp16 inputs are upcast) and broadcast over
leading dimensions, so ``[B, N, 4]`` deltas decode against ``[N, 4]`` anchors in one call.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["MAX_LOG_RATIO", "SIZE_EPS", "encode", "decode"]

#: Default clamp for ``dh`` / ``dw`` before ``exp`` in :func:`decode`: a box may be at most
#: 1000/16 = 62.5 times its anchor's side (the torchvision / Detectron convention).
MAX_LOG_RATIO = math.log(1000.0 / 16)

#: Smallest box side (pixels) used by :func:`encode`, so degenerate boxes give finite deltas.
#: The official coder adds 1e-8 (effdet 1e-7) to every side; clamping differs only for sides
#: below this value.
SIZE_EPS = 1e-7


def _check_last_dim(name: str, tensor: Tensor, what: str) -> None:
    if not isinstance(tensor, Tensor):
        raise ValueError(
            f"{name}: expected a Tensor [..., 4] of {what}, got {type(tensor).__name__}"
        )
    if tensor.dim() < 1 or tensor.shape[-1] != 4:
        raise ValueError(f"{name}: expected shape [..., 4] ({what}), got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {tensor.dtype}")


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _center_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return (y1 + y2) * 0.5, (x1 + x2) * 0.5, y2 - y1, x2 - x1


def encode(boxes: Tensor, anchors: Tensor, *, eps: float = SIZE_EPS) -> Tensor:
    """Encode absolute boxes as deltas relative to the anchors they are matched to.

    Args:
        boxes (Tensor[..., 4]): boxes in ``(x1, y1, x2, y2)`` format, input-image pixels.
        anchors (Tensor[..., 4]): anchors in ``(x1, y1, x2, y2)`` pixels, broadcastable against
            ``boxes`` (typically ``[N, 4]`` against ``[B, N, 4]``).
        eps (float): box and anchor sides are clamped to at least ``eps`` pixels before the
            division and the log, so degenerate boxes give large but finite deltas.

    Returns:
        deltas (Tensor[..., 4]): ``(dy, dx, dh, dw)`` (dimensionless; see the module docstring),
        of the broadcast shape, in ``promote_types(float32, boxes.dtype, anchors.dtype)``.
    """
    _check_last_dim("boxes", boxes, "x1, y1, x2, y2 in pixels")
    _check_last_dim("anchors", anchors, "x1, y1, x2, y2 in pixels")
    dtype = _compute_dtype(boxes, anchors)
    cy, cx, h, w = _center_size(boxes.to(dtype))
    cy_a, cx_a, h_a, w_a = _center_size(anchors.to(dtype))
    h = h.clamp(min=eps)
    w = w.clamp(min=eps)
    h_a = h_a.clamp(min=eps)
    w_a = w_a.clamp(min=eps)
    return torch.stack(
        [(cy - cy_a) / h_a, (cx - cx_a) / w_a, torch.log(h / h_a), torch.log(w / w_a)], dim=-1
    )


def decode(deltas: Tensor, anchors: Tensor, *, max_log_ratio: float = MAX_LOG_RATIO) -> Tensor:
    """Decode ``(dy, dx, dh, dw)`` deltas into absolute boxes (the inverse of :func:`encode`).

    Args:
        deltas (Tensor[..., 4]): ``(dy, dx, dh, dw)`` regressions (dimensionless).
        anchors (Tensor[..., 4]): anchors in ``(x1, y1, x2, y2)`` pixels, broadcastable against
            ``deltas``.
        max_log_ratio (float): ``dh`` and ``dw`` are clamped to at most this value before
            ``exp`` so that untrained heads cannot overflow (default ``log(1000 / 16)``).

    Returns:
        boxes (Tensor[..., 4]): ``(x1, y1, x2, y2)`` in input-image pixels, not clipped to the
        image, of the broadcast shape, in ``promote_types(float32, deltas.dtype, anchors.dtype)``.
    """
    _check_last_dim("deltas", deltas, "dy, dx, dh, dw")
    _check_last_dim("anchors", anchors, "x1, y1, x2, y2 in pixels")
    dtype = _compute_dtype(deltas, anchors)
    dy, dx, dh, dw = deltas.to(dtype).unbind(-1)
    cy_a, cx_a, h_a, w_a = _center_size(anchors.to(dtype))
    dh = dh.clamp(max=max_log_ratio)
    dw = dw.clamp(max=max_log_ratio)
    cy = dy * h_a + cy_a
    cx = dx * w_a + cx_a
    half_h = torch.exp(dh) * h_a * 0.5
    half_w = torch.exp(dw) * w_a * 0.5
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
