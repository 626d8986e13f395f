"""effdet 0.4.1 model configs as effscale :class:`~.config.DetectorConfig` values, and the
config-file reader that accepts both.

An effdet config (``effdet.get_efficientdet_config(name)``, or a ``*.effdet.json`` written by
``effscale export --format effdet``) is a flat dict. :func:`config_from_effdet` maps the keys that
define the network (backbone, image size, levels, anchors, BiFPN, heads, padding) and refuses,
in one line naming every reason, the variants effscale does not build (non-separable convs, no
resample BN, no redundant bias, other activations or FPN graphs, ...). Training and
post-processing keys (loss weights, NMS, the weights' URL) are not architecture and are ignored.

This module is torch-free: it reads data only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import (
    PADDINGS,
    AnchorConfig,
    BackboneConfig,
    DetectorConfig,
    FpnConfig,
    HeadConfig,
    load_config,
)

__all__ = [
    "EFFDET_FPN_NAMES",
    "EFFSCALE_TIMM_BACKBONE",
    "TIMM_EFFICIENTNETS",
    "EFFDET_SUFFIX",
    "effdet_pad_type",
    "config_from_effdet",
    "load_detector_config",
]

#: timm's registered TF-ported EfficientNets and their (width, depth) multipliers (timm 1.0,
#: ``_gen_efficientnet``; TF BatchNorm eps 1e-3 and "same" padding unless ``pad_type`` is given)
TIMM_EFFICIENTNETS: dict[str, tuple[float, float]] = {
    "tf_efficientnet_b0": (1.0, 1.0),
    "tf_efficientnet_b1": (1.0, 1.1),
    "tf_efficientnet_b2": (1.1, 1.2),
    "tf_efficientnet_b3": (1.2, 1.4),
    "tf_efficientnet_b4": (1.4, 1.8),
    "tf_efficientnet_b5": (1.6, 2.2),
    "tf_efficientnet_b6": (1.8, 2.6),
    "tf_efficientnet_b7": (2.0, 3.1),
    "tf_efficientnet_b8": (2.2, 3.6),
    "tf_efficientnet_l2": (4.3, 5.3),
}
#: the timm model that ``import effscale.detector.timm_backbone`` registers: any multipliers
EFFSCALE_TIMM_BACKBONE = "effscale_efficientnet"
#: effscale's fusion methods as effdet ``fpn_name`` values (``None`` is effdet's ``bifpn_fa``)
EFFDET_FPN_NAMES = {"fastattn": "bifpn_fa", "attn": "bifpn_attn", "sum": "bifpn_sum"}
#: the file suffix of effdet model configs written by ``effscale export``
EFFDET_SUFFIX = ".effdet.json"

#: effdet keys that must hold these values for effscale's network (tf_efficientdet_* defaults)
_REQUIRED = {
    "separable_conv": True,
    "apply_resample_bn": True,
    "redundant_bias": True,
    "conv_bn_relu_pattern": False,
    "downsample_type": "max",
    "upsample_type": "nearest",
    "norm_layer": None,
    "fpn_config": None,
}
_ACTIVATIONS = ("swish", "silu")
_BN_EPS = 1e-3
_BACKBONE_ARGS = {
    "tf": ("drop_path_rate", "pad_type"),
    "effscale": ("drop_path_rate", "width_multiplier", "depth_multiplier", "padding"),
}


def effdet_pad_type(padding: str) -> str:
    """effdet's (and timm's) ``pad_type`` for an effscale ``padding``: ``"same"`` or ``""``."""
    if padding not in PADDINGS:
        raise ValueError(f"padding: must be one of {', '.join(PADDINGS)}, got {padding!r}")
    return "same" if padding == "same" else ""


def _padding(pad_type: Any) -> str | None:
    return {"same": "same", "": "symmetric", None: "symmetric"}.get(pad_type)


def _backbone(h: Mapping[str, Any], reasons: list[str]) -> tuple[BackboneConfig, str | None]:
    """The backbone and the padding its convolutions use (None when it cannot be built)."""
    name = h.get("backbone_name")
    args = dict(h.get("backbone_args") or {})
    kind = {**dict.fromkeys(TIMM_EFFICIENTNETS, "tf"), EFFSCALE_TIMM_BACKBONE: "effscale"}.get(
        str(name)
    )
    if kind is None:
        reasons.append(
            f"backbone_name {name!r} is not an EfficientNet effscale builds (tf_efficientnet_b0"
            f"-b8, tf_efficientnet_l2 or {EFFSCALE_TIMM_BACKBONE})"
        )
        return BackboneConfig(), None
    extra = sorted(set(args) - set(_BACKBONE_ARGS[kind]))
    if extra:
        reasons.append(f"backbone_args {', '.join(extra)} are not effscale backbone settings")
    drop_path = float(args.get("drop_path_rate", 0.0) or 0.0)
    if kind == "tf":
        assert isinstance(name, str)
        width, depth = TIMM_EFFICIENTNETS[name]
        padding = _padding(args.get("pad_type", "same"))
    else:
        width = float(args.get("width_multiplier", 1.0))
        depth = float(args.get("depth_multiplier", 1.0))
        padding = args.get("padding", "same")
    if padding not in PADDINGS:
        reasons.append(f"backbone padding {args.get('pad_type', args.get('padding'))!r} is unknown")
        padding = None
    try:
        backbone = BackboneConfig(
            width_multiplier=width, depth_multiplier=depth, drop_path_rate=drop_path
        )
    except ValueError as exc:
        reasons.append(str(exc))
        return BackboneConfig(), None
    return backbone, padding


def _aspect_ratios(value: Any, reasons: list[str]) -> tuple[tuple[float, float], ...]:
    pairs = []
    for ratio in value or ():
        if isinstance(ratio, (int, float)):  # effdet's scalar form: w/h = ratio
            pairs.append((math.sqrt(ratio), 1 / math.sqrt(ratio)))
        elif isinstance(ratio, Sequence) and not isinstance(ratio, str) and len(ratio) == 2:
            pairs.append((float(ratio[0]), float(ratio[1])))
        else:
            reasons.append(f"aspect_ratios entry {ratio!r} is neither a number nor a pair")
    return tuple(pairs)


def config_from_effdet(h: Mapping[str, Any], *, name: str | None = None) -> DetectorConfig:
    """The effscale config of effdet model config ``h`` (a dict or an OmegaConf ``DictConfig``).

    ``name`` defaults to ``h["name"]``. Raises ``ValueError`` (``effdet config: ...``) listing
    every reason when effscale cannot build the same network; the parameters (and, with
    matching weights, the outputs) of ``build_model(config_from_effdet(h))`` equal
    ``effdet.EfficientDet(h)``'s.
    """
    h = dict(h)
    reasons: list[str] = []
    for key, wanted in _REQUIRED.items():
        if h.get(key, wanted) != wanted:
            reasons.append(f"{key} = {h[key]!r} (effscale builds {wanted!r})")
    for key in ("act_type", "head_act_type"):
        act = h.get(key)
        if act is not None and act not in _ACTIVATIONS:
            reasons.append(f"{key} = {act!r} (effscale uses swish)")
    eps = (h.get("norm_kwargs") or {}).get("eps", _BN_EPS)
    if not math.isclose(float(eps), _BN_EPS):
        reasons.append(f"norm_kwargs.eps = {eps!r} (effscale's BatchNorm eps is {_BN_EPS:g})")
    fusions = {v: k for k, v in EFFDET_FPN_NAMES.items()}
    fpn_name = h.get("fpn_name") or "bifpn_fa"
    if fpn_name not in fusions:
        reasons.append(f"fpn_name = {fpn_name!r} (effscale builds {', '.join(fusions)})")
    backbone, backbone_padding = _backbone(h, reasons)
    padding = _padding(h.get("pad_type", "same"))
    if padding is None:
        reasons.append(f"pad_type = {h.get('pad_type')!r} (effscale pads 'same' or '')")
    elif backbone_padding is not None and backbone_padding != padding:
        reasons.append(
            f"the backbone pads {backbone_padding!r} but pad_type gives {padding!r} (effscale "
            "pads the whole network one way)"
        )
    min_level, max_level = int(h.get("min_level", 3)), int(h.get("max_level", 7))
    indices = h.get("backbone_indices")
    expected_indices = list(range(min_level - 1, 5))
    if indices is not None and list(indices) != expected_indices:
        reasons.append(
            f"backbone_indices = {list(indices)!r} (levels {min_level}-5 are {expected_indices})"
        )
    elif indices is None and min_level != 3:
        reasons.append(f"min_level = {min_level} needs backbone_indices = {expected_indices}")
    ratios = _aspect_ratios(h.get("aspect_ratios"), reasons)
    if reasons:
        raise ValueError(f"effdet config: effscale cannot build it: {'; '.join(reasons)}")
    size = h.get("image_size", (512, 512))
    size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(v) for v in size)
    try:
        return DetectorConfig(
            name=name or str(h.get("name") or "effdet"),
            backbone=backbone,
            image_size=size,
            min_level=min_level,
            max_level=max_level,
            fpn=FpnConfig(
                channels=int(h["fpn_channels"]),
                repeats=int(h["fpn_cell_repeats"]),
                fusion=fusions[fpn_name],
            ),
            head=HeadConfig(repeats=int(h["box_class_repeats"])),
            anchors=AnchorConfig(
                num_scales=int(h.get("num_scales", 3)),
                aspect_ratios=ratios,
                anchor_scale=float(h.get("anchor_scale", 4.0)),
            ),
            num_classes=int(h.get("num_classes", 90)),
            padding=padding or "same",
        )
    except KeyError as exc:
        raise ValueError(f"effdet config: missing key {exc.args[0]!r}") from None
    except ValueError as exc:
        raise ValueError(f"effdet config: {exc}") from None


def load_detector_config(path: str | Path) -> DetectorConfig:
    """Read a detector config file: effscale's ``.toml``/``.json`` (:func:`~.config.load_config`)
    or an effdet model config, ``*.effdet.json`` (:func:`config_from_effdet`), as written by
    ``effscale export --format effdet``."""
    path = Path(path)
    if not path.name.endswith(EFFDET_SUFFIX):
        return load_config(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"config file {path}: not valid json: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: an effdet config is a JSON object")
    try:
        return config_from_effdet(data)
    except ValueError as exc:
        raise ValueError(f"config file {path}: {exc}") from None
