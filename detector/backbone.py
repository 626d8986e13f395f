"""EfficientNet feature extractor with any width and depth multiplier, built by timm's builder.

The architecture is the table :data:`EFFICIENTNET_B0_ARCH` (timm's block-string notation); the
width multiplier is applied to every layer's channels by ``round_channels`` and the depth
multiplier to every stage's repeats by ceil, in :func:`decode_backbone`. That is the single
place where multipliers touch the backbone, and :mod:`effscale.detector.complexity` reads the same
decoded table.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNetFeatures
from torch import nn

from .config import PADDINGS, BackboneConfig
from .scaling import round_channels

__all__ = [
    "EFFICIENTNET_B0_ARCH",
    "STEM_CHANNELS",
    "BN_EPS",
    "BN_MOMENTUM",
    "BlockSpec",
    "decode_backbone",
    "feature_channels",
    "efficientnet_features",
    "EfficientNetBackbone",
]

#: EfficientNet-B0, one row per stage: block type, repeats, kernel, stride, expansion, channels, SE.
EFFICIENTNET_B0_ARCH = (
    ("ds_r1_k3_s1_e1_c16_se0.25",),
    ("ir_r2_k3_s2_e6_c24_se0.25",),
    ("ir_r2_k5_s2_e6_c40_se0.25",),
    ("ir_r3_k3_s2_e6_c80_se0.25",),
    ("ir_r3_k5_s1_e6_c112_se0.25",),
    ("ir_r4_k5_s2_e6_c192_se0.25",),
    ("ir_r1_k3_s1_e6_c320_se0.25",),
)
STEM_CHANNELS = 32
#: TensorFlow's BatchNorm defaults, as in the official release (PyTorch momentum convention).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
#: stages whose last block gives the stride-8, -16 and -32 features (P3, P4, P5)
_FEATURE_STAGES = {3: 2, 4: 4, 5: 6}


@dataclass(frozen=True)
class BlockSpec:
    """One backbone block after the multipliers: channels in and out, depthwise kernel, stride,
    expansion ratio and SE ratio (relative to the block input), and the stage it belongs to."""

    kind: str  # "ds" (depthwise separable) or "ir" (inverted residual)
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    expansion: float
    se_ratio: float
    stage: int


def decode_backbone(config: BackboneConfig) -> tuple[int, list[BlockSpec]]:
    """Apply the multipliers to the B0 table: returns (stem channels, block specs in order)."""

    stages = decode_arch_def(
        [list(row) for row in EFFICIENTNET_B0_ARCH], config.depth_multiplier, depth_trunc="ceil"
    )
    stem = round_channels(STEM_CHANNELS, config.width_multiplier)
    blocks: list[BlockSpec] = []
    in_channels = stem
    for stage_index, stage in enumerate(stages):
        for block_index, args in enumerate(stage):
            out_channels = round_channels(args["out_chs"], config.width_multiplier)
            blocks.append(
                BlockSpec(
                    kind=args["block_type"],
                    in_channels=in_channels,
                    out_channels=out_channels,
                    kernel=int(args["dw_kernel_size"]),
                    stride=int(args["stride"]) if block_index == 0 else 1,
                    expansion=float(args.get("exp_ratio", 1.0)),
                    se_ratio=float(args.get("se_ratio") or 0.0),
                    stage=stage_index,
                )
            )
            in_channels = out_channels
    return stem, blocks


def feature_channels(config: BackboneConfig) -> dict[int, int]:
    """Channels of the backbone's level-3, -4 and -5 features (strides 8, 16, 32)."""
    _, blocks = decode_backbone(config)
    last = {}
    for block in blocks:
        last[block.stage] = block.out_channels
    return {level: last[stage] for level, stage in _FEATURE_STAGES.items()}


def efficientnet_features(
    config: BackboneConfig, *, padding: str = "symmetric", out_indices: tuple[int, ...] = (2, 3, 4)
) -> EfficientNetFeatures:
    """timm's ``EfficientNetFeatures`` for ``config``: the B0 table under the multipliers, swish,
    TF BatchNorm defaults, and ``padding`` for every convolution (``"same"``: timm's TF "same"
    padding, as ``tf_efficientnet_b*``; ``"symmetric"``: ``kernel // 2`` per side). Indices
    2, 3, 4 of ``out_indices`` are the stride-8, -16 and -32 features. This is the one builder of
    the backbone: :class:`EfficientNetBackbone` and the timm model that
    :mod:`effscale.detector.timm_backbone` registers both call it."""
    if padding not in PADDINGS:
        raise ValueError(f"padding: must be one of {', '.join(PADDINGS)}, got {padding!r}")
    block_args = decode_arch_def(
        [list(row) for row in EFFICIENTNET_B0_ARCH], config.depth_multiplier, depth_trunc="ceil"
    )
    return EfficientNetFeatures(
        block_args,
        out_indices=out_indices,
        stem_size=STEM_CHANNELS,
        pad_type="same" if padding == "same" else "",
        round_chs_fn=partial(round_channels, multiplier=config.width_multiplier),
        act_layer=nn.SiLU,
        norm_layer=partial(nn.BatchNorm2d, eps=BN_EPS, momentum=BN_MOMENTUM),
        drop_path_rate=config.drop_path_rate,
    )


class EfficientNetBackbone(nn.Module):
    """EfficientNet features at strides 8, 16 and 32.

    Input: float images [B, 3, H, W] (normalized). Output: a list of three tensors
    [B, C_l, ceil(H / 2**l), ceil(W / 2**l)] for l = 3, 4, 5, with ``C_l`` from
    :func:`feature_channels`. ``padding`` (:data:`~.config.PADDINGS`): ``"same"`` pads stride-2
    convolutions as TensorFlow does (effdet's ``tf_`` models); ``"symmetric"`` pads ``kernel //
    2`` per side (PyTorch-native, no extra pad op). The feature sizes are the same.
    """

    def __init__(self, config: BackboneConfig, *, padding: str = "symmetric") -> None:
        super().__init__()
        self.config = config
        self.padding = padding
        self.body = efficientnet_features(config, padding=padding)
        self.channels = tuple(self.body.feature_info.channels())
        expected = tuple(feature_channels(config).values())
        if self.channels != expected:  # the decoded table and timm disagree: a builder change
            raise RuntimeError(f"backbone channels {self.channels} != decoded {expected}")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.body(images)
