"""The timm model ``effscale_efficientnet``: effscale's EfficientNet backbone with any width and
depth multipliers, registered with timm when this module is imported.

timm registers EfficientNets only at the B0-B8 and L2 multipliers, and each registered function
fixes its own, so an effdet config cannot ask timm for another backbone. After::

    import effscale.detector.timm_backbone  # registers effscale_efficientnet with timm

an effdet config may name ``backbone_name = "effscale_efficientnet"`` with ``backbone_args =
{"width_multiplier": 1.331, "depth_multiplier": 1.728, "padding": "same", "drop_path_rate":
0.0}``; ``effdet.EfficientDet(config)`` then builds exactly effscale's backbone (one builder,
:func:`effscale.detector.backbone.efficientnet_features`), with equal parameter names and counts.
This is how every member of ``effscale export --format effdet`` loads in effdet 0.4.1.
"""

from __future__ import annotations

import logging
from typing import Any

from timm.models import register_model
from timm.models.efficientnet import EfficientNetFeatures

from .backbone import efficientnet_features
from .config import BackboneConfig
from .effdet_config import EFFSCALE_TIMM_BACKBONE

__all__ = ["EFFSCALE_TIMM_BACKBONE", "effscale_efficientnet"]

_log = logging.getLogger(__name__)


@register_model
def effscale_efficientnet(
    pretrained: bool = False,
    *,
    width_multiplier: float = 1.0,
    depth_multiplier: float = 1.0,
    padding: str = "same",
    drop_path_rate: float = 0.0,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (2, 3, 4),
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: Any = None,
    cache_dir: Any = None,
) -> EfficientNetFeatures:
    """timm's entry point (``timm.create_model("effscale_efficientnet", features_only=True,
    ...)``): the EfficientNet feature extractor at ``width_multiplier`` and ``depth_multiplier``
    (over B0, dimensionless), TF ``"same"`` or ``"symmetric"`` ``padding``, and stochastic depth
    ``drop_path_rate``. It has no released weights: with ``pretrained`` (effdet's default
    ``pretrained_backbone=True``) it warns, as timm does for such models, and starts random; load
    ImageNet weights with :mod:`effscale.detector.pretrained` where a registered EfficientNet
    fits."""
    if not features_only:
        raise ValueError(
            f"{EFFSCALE_TIMM_BACKBONE}: only the feature extractor is built; pass "
            "features_only=True (effdet does)"
        )
    if pretrained:
        _log.warning(
            "%s has no pretrained weights; using random initialization", EFFSCALE_TIMM_BACKBONE
        )
    config = BackboneConfig(
        width_multiplier=float(width_multiplier),
        depth_multiplier=float(depth_multiplier),
        drop_path_rate=float(drop_path_rate),
    )
    return efficientnet_features(config, padding=padding, out_indices=tuple(out_indices))
