"""Class and box heads, shared across pyramid levels, with BatchNorm per level and per repeat."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import SeparableConv, batch_norm

__all__ = ["PRIOR_PROBABILITY", "PredictionHead"]

#: the class bias starts at -log((1 - p) / p), so that every anchor begins as background
PRIOR_PROBABILITY = 0.01


class PredictionHead(nn.Module):
    """``repeats`` x (separable conv, per-level BN, swish), then a separable conv to
    ``num_anchors * outputs_per_anchor`` channels.

    Input: a list of maps [B, channels, H_l, W_l] (one per level). Output: a list of
    [B, num_anchors * outputs_per_anchor, H_l, W_l], same order. For the class head the
    prediction bias is set to the focal-loss prior; for the box head it is zero.
    """

    def __init__(
        self,
        *,
        channels: int,
        repeats: int,
        num_levels: int,
        num_anchors: int,
        outputs_per_anchor: int,
        prior_probability: float | None = None,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(SeparableConv(channels, channels) for _ in range(repeats))
        self.bns = nn.ModuleList(
            nn.ModuleList(batch_norm(channels) for _ in range(repeats)) for _ in range(num_levels)
        )
        self.predict = SeparableConv(channels, num_anchors * outputs_per_anchor)
        bias = self.predict.pointwise.bias
        assert bias is not None  # the prediction conv has a bias, as effdet's
        if prior_probability is not None:
            nn.init.constant_(bias, -math.log((1 - prior_probability) / prior_probability))
        else:
            nn.init.zeros_(bias)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for level, x in enumerate(features):
            for conv, bn in zip(self.convs, self.bns[level]):  # type: ignore[call-overload]
                x = F.silu(bn(conv(x)))
            outputs.append(self.predict(x))
        return outputs
