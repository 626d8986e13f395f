"""Detector configuration as data: frozen dataclasses, the official D0-D7 presets, and
:func:`from_scaling` for any scaling spec.

Only the architecture lives here. Loss weights, NMS thresholds and training settings belong to
:mod:`effscale.detector.loss`, :mod:`effscale.detector.postprocess` and :mod:`effscale.detector.train`.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomli_w

from .scaling import (
    MIN_RESOLUTION,
    PAPER_SPEC,
    PHI_RANGE,
    RESOLUTION_MULTIPLE,
    ScalingSpec,
    scale,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "FUSION_METHODS",
    "PADDINGS",
    "BackboneConfig",
    "FpnConfig",
    "HeadConfig",
    "AnchorConfig",
    "DetectorConfig",
    "PRESETS",
    "PRESET_NAMES",
    "preset",
    "from_scaling",
    "config_from_dict",
    "load_config",
]

FUSION_METHODS = ("fastattn", "attn", "sum")
#: ``DetectorConfig.padding``: ``"same"`` is TensorFlow's (the official release, effdet's ``tf_``
#: models); ``"symmetric"`` pads every side by ``kernel // 2`` (PyTorch-native)
PADDINGS = ("same", "symmetric")


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{field_name}: {message}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class BackboneConfig:
    """An EfficientNet backbone: width and depth multipliers over B0 (dimensionless).

    B0 is (1.0, 1.0); the official EfficientNets are B1 (1.0, 1.1), B2 (1.1, 1.2), B3 (1.2, 1.4),
    B4 (1.4, 1.8), B5 (1.6, 2.2), B6 (1.8, 2.6), B7 (2.0, 3.1). Any positive values are legal.
    """

    width_multiplier: float = 1.0
    depth_multiplier: float = 1.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        _require(
            _is_number(self.width_multiplier) and 0.05 <= self.width_multiplier <= 8,
            "backbone.width_multiplier",
            f"must be a number in [0.05, 8], got {self.width_multiplier!r}",
        )
        _require(
            _is_number(self.depth_multiplier) and 0.05 <= self.depth_multiplier <= 8,
            "backbone.depth_multiplier",
            f"must be a number in [0.05, 8], got {self.depth_multiplier!r}",
        )
        _require(
            _is_number(self.drop_path_rate) and 0 <= self.drop_path_rate < 1,
            "backbone.drop_path_rate",
            f"must be in [0, 1), got {self.drop_path_rate!r}",
        )


@dataclass(frozen=True)
class FpnConfig:
    """The BiFPN: ``channels`` per level, ``repeats`` cells, and the weighted-fusion method.

    ``fusion``: ``fastattn`` (fast normalized: relu weights divided by their sum + 1e-4),
    ``attn`` (softmax weights) or ``sum`` (unweighted).
    """

    channels: int = 64
    repeats: int = 3
    fusion: str = "fastattn"

    def __post_init__(self) -> None:
        _require(
            _is_int(self.channels) and 8 <= self.channels <= 4096,
            "fpn.channels",
            f"must be an integer in [8, 4096], got {self.channels!r}",
        )
        _require(
            _is_int(self.repeats) and 1 <= self.repeats <= 32,
            "fpn.repeats",
            f"must be an integer in [1, 32], got {self.repeats!r}",
        )
        _require(
            self.fusion in FUSION_METHODS,
            "fpn.fusion",
            f"must be one of {', '.join(FUSION_METHODS)}, got {self.fusion!r}",
        )


@dataclass(frozen=True)
class HeadConfig:
    """Class and box heads: ``repeats`` separable convs before the prediction conv."""

    repeats: int = 3

    def __post_init__(self) -> None:
        _require(
            _is_int(self.repeats) and 1 <= self.repeats <= 16,
            "head.repeats",
            f"must be an integer in [1, 16], got {self.repeats!r}",
        )


@dataclass(frozen=True)
class AnchorConfig:
    """Anchors: ``num_scales`` octave scales, ``aspect_ratios`` as (w, h) factor pairs, and
    ``anchor_scale``, the base anchor side in units of the level's stride."""

    num_scales: int = 3
    aspect_ratios: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
    anchor_scale: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "aspect_ratios", tuple(tuple(float(v) for v in r) for r in self.aspect_ratios)
        )
        _require(
            _is_int(self.num_scales) and 1 <= self.num_scales <= 8,
            "anchors.num_scales",
            f"must be an integer in [1, 8], got {self.num_scales!r}",
        )
        _require(
            len(self.aspect_ratios) >= 1
            and all(
                len(r) == 2 and all(_is_number(v) and v > 0 for v in r) for r in self.aspect_ratios
            ),
            "anchors.aspect_ratios",
            f"must be a non-empty list of positive (w, h) pairs, got {self.aspect_ratios!r}",
        )
        _require(
            _is_number(self.anchor_scale) and 0 < self.anchor_scale <= 64,
            "anchors.anchor_scale",
            f"must be in (0, 64], got {self.anchor_scale!r}",
        )

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map location: ``num_scales * len(aspect_ratios)``."""
        return self.num_scales * len(self.aspect_ratios)


@dataclass(frozen=True)
class DetectorConfig:
    """A complete EfficientDet architecture.

    ``image_size`` is (height, width) in pixels, each a multiple of 8 (at least 32). Pyramid levels run from
    ``min_level`` to ``max_level`` inclusive (stride ``2**level``); the backbone gives levels up
    to 5, and coarser levels come from downsampling.

    ``padding`` is how stride-2 convolutions and max-pools pad (:data:`PADDINGS`): ``"same"`` is
    TensorFlow's, as in the official release and effdet's ``tf_`` models (whose weights then
    load with equal outputs); ``"symmetric"`` pads ``kernel // 2`` on every side. Both give the
    same feature sizes, parameters and MACs. :func:`preset` and :func:`from_scaling` give
    ``"same"``; the field's default, ``"symmetric"``, is what a config file or checkpoint written
    before the key existed was built with, so that it loads unchanged.
    """

    name: str = "custom"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    image_size: tuple[int, int] = (512, 512)
    min_level: int = 3
    max_level: int = 7
    fpn: FpnConfig = field(default_factory=FpnConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    num_classes: int = 90
    padding: str = "symmetric"

    def __post_init__(self) -> None:
        size: Any = self.image_size
        if _is_int(size):
            size = (size, size)
        _require(
            isinstance(size, (tuple, list)) and len(size) == 2,
            "image_size",
            f"must be (height, width), got {self.image_size!r}",
        )
        size = tuple(size)
        for axis, value in zip(("height", "width"), size):
            _require(
                _is_int(value) and value >= MIN_RESOLUTION and value % RESOLUTION_MULTIPLE == 0,
                "image_size",
                f"{axis} must be a multiple of {RESOLUTION_MULTIPLE} pixels, at least "
                f"{MIN_RESOLUTION}, got {value!r}",
            )
            _require(value <= 4096, "image_size", f"{axis} must be <= 4096 pixels, got {value}")
        object.__setattr__(self, "image_size", size)
        _require(
            isinstance(self.name, str) and self.name != "",
            "name",
            f"must be a non-empty string, got {self.name!r}",
        )
        _require(
            _is_int(self.min_level) and 3 <= self.min_level <= 5,
            "min_level",
            f"must be an integer in [3, 5], got {self.min_level!r}",
        )
        _require(
            _is_int(self.max_level) and max(self.min_level + 1, 5) <= self.max_level <= 8,
            "max_level",
            f"must be an integer in [{max(self.min_level + 1, 5)}, 8], got {self.max_level!r}",
        )
        _require(
            _is_int(self.num_classes) and 1 <= self.num_classes <= 100000,
            "num_classes",
            f"must be an integer in [1, 100000], got {self.num_classes!r}",
        )
        _require(
            self.padding in PADDINGS,
            "padding",
            f"must be one of {', '.join(PADDINGS)}, got {self.padding!r}",
        )
        for name, kind in (
            ("backbone", BackboneConfig),
            ("fpn", FpnConfig),
            ("head", HeadConfig),
            ("anchors", AnchorConfig),
        ):
            _require(
                isinstance(getattr(self, name), kind),
                name,
                f"must be a {kind.__name__}, got {type(getattr(self, name)).__name__}",
            )

    @property
    def levels(self) -> tuple[int, ...]:
        """The pyramid levels, ascending."""
        return tuple(range(self.min_level, self.max_level + 1))

    def replace(self, **changes: Any) -> DetectorConfig:
        """A copy with top-level fields changed (validated again)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(changes)
        return DetectorConfig(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists for tuples), the inverse of :func:`config_from_dict`."""
        plain: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return plain

    def to_json(self, *, indent: int | None = 2) -> str:
        """The config as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def to_toml(self) -> str:
        """The config as TOML text (readable by :func:`load_config`)."""

        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> Path:
        """Write the config as ``.toml`` or ``.json`` (by suffix); returns the path."""
        path = Path(path)
        if path.suffix == ".toml":
            text = self.to_toml()
        elif path.suffix == ".json":
            text = self.to_json()
        else:
            raise ValueError(f"config path: suffix must be .toml or .json, got {path.name!r}")
        path.write_text(text)
        return path


_SECTIONS = {
    "backbone": BackboneConfig,
    "fpn": FpnConfig,
    "head": HeadConfig,
    "anchors": AnchorConfig,
}


def config_from_dict(data: dict[str, Any]) -> DetectorConfig:
    """Build a :class:`DetectorConfig` from a plain dict; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ValueError(f"config: must be a table/object, got {type(data).__name__}")
    allowed = {f.name for f in fields(DetectorConfig)}
    unknown = sorted(set(data) - allowed)
    _require(
        not unknown,
        unknown[0] if unknown else "",
        f"unknown key; allowed keys are {', '.join(sorted(allowed))}",
    )
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            kind = _SECTIONS[key]
            _require(isinstance(value, dict), key, f"must be a table, got {type(value).__name__}")
            section_allowed = {f.name for f in fields(kind)}
            bad = sorted(set(value) - section_allowed)
            _require(
                not bad,
                f"{key}.{bad[0]}" if bad else key,
                f"unknown key; allowed keys are {', '.join(sorted(section_allowed))}",
            )
            section = dict(value)
            if key == "anchors" and "aspect_ratios" in section:
                section["aspect_ratios"] = tuple(tuple(r) for r in section["aspect_ratios"])
            kwargs[key] = kind(**section)
        elif key == "image_size":
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        else:
            kwargs[key] = value
    return DetectorConfig(**kwargs)


def load_config(path: str | Path) -> DetectorConfig:
    """Read a config written by :meth:`DetectorConfig.save` (``.toml`` or ``.json``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"config file {path}: not valid {path.suffix[1:]}: {exc}") from None
    return config_from_dict(data)


# (backbone width, backbone depth, image size, W_bifpn, D_bifpn, D_head, fusion, anchor_scale)
_OFFICIAL = {
    "d0": (1.0, 1.0, 512, 64, 3, 3, "fastattn", 4.0),
    "d1": (1.0, 1.1, 640, 88, 4, 3, "fastattn", 4.0),
    "d2": (1.1, 1.2, 768, 112, 5, 3, "fastattn", 4.0),
    "d3": (1.2, 1.4, 896, 160, 6, 4, "fastattn", 4.0),
    "d4": (1.4, 1.8, 1024, 224, 7, 4, "fastattn", 4.0),
    "d5": (1.6, 2.2, 1280, 288, 7, 4, "fastattn", 4.0),
    "d6": (1.8, 2.6, 1280, 384, 8, 5, "sum", 4.0),
    "d7": (1.8, 2.6, 1536, 384, 8, 5, "sum", 5.0),
}

PRESET_NAMES = tuple(_OFFICIAL)


def preset(name: str, *, num_classes: int = 90) -> DetectorConfig:
    """The official EfficientDet ``d0`` .. ``d7`` architecture (google/automl release), with its
    TF ``"same"`` padding."""
    key = name.lower() if isinstance(name, str) else name
    if key not in _OFFICIAL:
        raise ValueError(
            f"preset: unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}"
        )
    width, depth, size, channels, repeats, head, fusion, anchor_scale = _OFFICIAL[key]
    return DetectorConfig(
        name=key,
        backbone=BackboneConfig(width_multiplier=width, depth_multiplier=depth),
        image_size=(size, size),
        fpn=FpnConfig(channels=channels, repeats=repeats, fusion=fusion),
        head=HeadConfig(repeats=head),
        anchors=AnchorConfig(anchor_scale=anchor_scale),
        num_classes=num_classes,
        padding="same",
    )


PRESETS = {name: preset(name) for name in PRESET_NAMES}


def from_scaling(
    spec: ScalingSpec | None = None,
    phi: float = 0.0,
    *,
    alpha: float | None = None,
    beta: float | None = None,
    gamma: float | None = None,
    num_classes: int = 90,
    fusion: str = "fastattn",
    name: str | None = None,
    image_size: tuple[int, int] | None = None,
    min_level: int = 3,
    max_level: int = 7,
    anchors: AnchorConfig | None = None,
    padding: str = "same",
) -> DetectorConfig:
    """The detector that ``spec`` gives at compound coefficient ``phi``.

    Instead of a ``spec``, plain coefficients may be given: ``from_scaling(phi=1, alpha=1.2,
    beta=1.1)`` is the paper's spec (:data:`~.scaling.PAPER_SPEC`: BiFPN and resolution rules)
    with those coefficients; an unset one keeps the paper's value. ``image_size`` overrides the
    spec's square resolution (pixels). ``padding`` defaults to the official ``"same"``, so that
    the paper's spec at φ = 0 is the D0 preset itself.
    """
    given = {k: v for k, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)) if v is not None}
    if spec is None:
        spec = replace(PAPER_SPEC, coefficients=replace(PAPER_SPEC.coefficients, **given))
    elif given:
        raise ValueError(
            f"{next(iter(given))}: give the coefficients either in spec or as "
            "keywords, not both; drop the keyword or the spec"
        )
    if not (_is_number(phi) and PHI_RANGE[0] <= phi <= PHI_RANGE[1]):
        raise ValueError(
            f"phi: must be a finite number in [{PHI_RANGE[0]}, {PHI_RANGE[1]}], got {phi!r}"
        )
    dims = scale(spec, phi)
    size = image_size if image_size is not None else (dims.resolution, dims.resolution)
    return DetectorConfig(
        name=name or f"phi{phi:g}",
        backbone=BackboneConfig(
            width_multiplier=dims.width_multiplier, depth_multiplier=dims.depth_multiplier
        ),
        image_size=size,
        min_level=min_level,
        max_level=max_level,
        fpn=FpnConfig(channels=dims.bifpn_channels, repeats=dims.bifpn_repeats, fusion=fusion),
        head=HeadConfig(repeats=dims.head_repeats),
        anchors=anchors or AnchorConfig(),
        num_classes=num_classes,
        padding=padding,
    )
