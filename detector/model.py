"""EfficientDet: backbone, BiFPN and heads; :func:`build_model` is the only builder."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import EfficientNetBackbone, feature_channels
from .bifpn import Bifpn
from .config import DetectorConfig
from .fpn_graph import bifpn_graph
from .heads import PRIOR_PROBABILITY, PredictionHead
from .scaling import RESOLUTION_MULTIPLE

__all__ = ["EfficientDet", "build_model"]


class EfficientDet(nn.Module):
    """A detector made of the components passed in.

    ``forward(images)`` takes float images [B, 3, H, W], normalized, with H and W multiples of
    :data:`~.scaling.RESOLUTION_MULTIPLE` (8; ``config.image_size`` or any other such size), and returns ``(class_logits, box_deltas)``:
    two lists with one tensor per level from ``min_level`` to ``max_level``,
    [B, A * num_classes, H_l, W_l] and [B, A * 4, H_l, W_l], where A is anchors per location and
    H_l = ceil(H / 2**l). :func:`effscale.detector.anchors.flatten_outputs` turns them into [B, N, ·].
    """

    def __init__(
        self,
        *,
        config: DetectorConfig,
        backbone: nn.Module,
        fpn: nn.Module,
        class_head: nn.Module,
        box_head: nn.Module,
    ) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.fpn = fpn
        self.class_head = class_head
        self.box_head = box_head

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected [B, 3, H, W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % RESOLUTION_MULTIPLE or w % RESOLUTION_MULTIPLE:
            raise ValueError(
                f"images: H and W must be multiples of {RESOLUTION_MULTIPLE}, got {h}x{w}"
            )
        features = self.fpn(self.backbone(images))
        return self.class_head(features), self.box_head(features)


def build_model(config: DetectorConfig) -> EfficientDet:
    """Build the EfficientDet that ``config`` describes (weights randomly initialized)."""
    levels = config.max_level - config.min_level + 1
    num_anchors = config.anchors.num_anchors
    backbone = EfficientNetBackbone(config.backbone, padding=config.padding)
    fpn = Bifpn(
        graph=bifpn_graph(config.min_level, config.max_level),
        channels=config.fpn.channels,
        repeats=config.fpn.repeats,
        fusion=config.fpn.fusion,
        backbone_channels=feature_channels(config.backbone),
        padding=config.padding,
    )
    class_head = PredictionHead(
        channels=config.fpn.channels,
        repeats=config.head.repeats,
        num_levels=levels,
        num_anchors=num_anchors,
        outputs_per_anchor=config.num_classes,
        prior_probability=PRIOR_PROBABILITY,
    )
    box_head = PredictionHead(
        channels=config.fpn.channels,
        repeats=config.head.repeats,
        num_levels=levels,
        num_anchors=num_anchors,
        outputs_per_anchor=4,
    )
    return EfficientDet(
        config=config, backbone=backbone, fpn=fpn, class_head=class_head, box_head=box_head
    )
