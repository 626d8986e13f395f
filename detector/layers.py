"""Small building blocks shared by the BiFPN and the heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import BN_EPS, BN_MOMENTUM

__all__ = ["SeparableConv", "ConvBn", "batch_norm", "max_pool_down", "resize_to"]


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the official release's TF defaults (eps 1e-3, momentum 0.01)."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SeparableConv(nn.Module):
    """Depthwise 3x3 (no bias) then pointwise 1x1 (with bias): [B, C_in, H, W] -> [B, C_out, H, W].

    It pads one pixel on every side, which at stride 1 is also TF "same" padding: the BiFPN and
    heads are the same for both :data:`~.config.PADDINGS`.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ConvBn(nn.Module):
    """1x1 conv (with bias) then BatchNorm: changes channels, keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=True)
        self.bn = batch_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def max_pool_down(x: torch.Tensor, padding: str = "symmetric") -> torch.Tensor:
    """3x3 max-pooling with stride 2: [B, C, h, w] -> [B, C, ceil(h / 2), ceil(w / 2)].

    ``padding="symmetric"`` pads one pixel on every side; ``"same"`` pads as TensorFlow does
    (effdet's ``MaxPool2dSame``): ``max(2 * ceil(n / 2) + 1 - n, 0)`` pixels per axis, the odd
    one at the end, so an even side is padded only after its last pixel. Padding is ``-inf``, so
    it never wins the max.
    """
    if padding == "symmetric":
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    h, w = x.shape[-2:]
    pad_h = max(2 * ((h + 1) // 2) + 1 - h, 0)
    pad_w = max(2 * ((w + 1) // 2) + 1 - w, 0)
    x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=-math.inf)
    return F.max_pool2d(x, kernel_size=3, stride=2)


def resize_to(x: torch.Tensor, size: tuple[int, int], padding: str = "symmetric") -> torch.Tensor:
    """Resample [B, C, h, w] to exactly [B, C, *size].

    Coarser targets use :func:`max_pool_down` (3x3, stride 2, ``padding``; odd sizes round up),
    repeated while the map is at least twice the target; any remaining mismatch, and all
    upsampling, uses nearest-neighbour interpolation to the exact size, so non-square inputs and
    sizes that are not powers of two come out right.
    """
    h, w = x.shape[-2:]
    th, tw = size
    while h >= 2 * th - 1 and w >= 2 * tw - 1 and (h, w) != (th, tw):
        x = max_pool_down(x, padding)
        h, w = x.shape[-2:]
    if (h, w) != (th, tw):
        x = F.interpolate(x, size=(th, tw), mode="nearest")
    return x
