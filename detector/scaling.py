"""Compound scaling as one pure function: coefficients and φ in, legal detector dimensions out.

This module imports no torch, so that the search can reason about specs cheaply.

Conventions
-----------
* ``alpha`` scales backbone depth, ``beta`` backbone width and ``gamma`` input resolution, each as
  ``coefficient ** phi`` (EfficientNet, Tan & Le 2019).
* The BiFPN grows as ``W = width_base * width_growth ** phi``,
  ``D = depth_base + depth_step * phi`` and the heads as
  ``D_head = head_depth_base + floor(phi / head_depth_period)`` (EfficientDet, Tan et al. 2020).
* Resolution is either ``base * gamma ** phi`` (``kind="compound"``) or the paper's
  ``base + step * phi`` (``kind="linear"``, 512 + 128·φ).
* Legal rounding: channels to a multiple of 8 (timm's ``round_channels`` convention: nearest
  multiple, never more than 10% below the exact value), repeats by ceil and at least 1,
  resolution to the nearest multiple of 8 and at least 32 (:data:`RESOLUTION_MULTIPLE`; the
  network and its anchors take any such side, see :mod:`.anchors`).

φ may be fractional or negative; negative φ gives the small proxies used in tests and searches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "CHANNEL_DIVISOR",
    "RESOLUTION_MULTIPLE",
    "MIN_RESOLUTION",
    "CompoundCoefficients",
    "BifpnRule",
    "ResolutionRule",
    "ScalingSpec",
    "ScaledDimensions",
    "PAPER_COEFFICIENTS",
    "PAPER_BIFPN_RULE",
    "PAPER_RESOLUTION_RULE",
    "PAPER_SPEC",
    "make_divisible",
    "round_channels",
    "round_repeats",
    "round_resolution",
    "compound_cost_ratio",
    "scale",
]

CHANNEL_DIVISOR = 8
#: image sides are multiples of this many pixels (fine enough that γ moves a proxy's resolution)
RESOLUTION_MULTIPLE = 8
#: the smallest image side, in pixels
MIN_RESOLUTION = 32


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{field}: {message}")


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def make_divisible(
    value: float, divisor: int = CHANNEL_DIVISOR, *, round_limit: float = 0.9
) -> int:
    """Round ``value`` (a channel count) to the nearest multiple of ``divisor``.

    The result is at least ``divisor`` and never more than ``1 - round_limit`` (10%) below
    ``value``; this is the rule of timm's ``make_divisible`` and TF's EfficientNet.
    """
    _require(divisor >= 1, "divisor", f"must be >= 1, got {divisor}")
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def round_channels(channels: float, multiplier: float = 1.0, divisor: int = CHANNEL_DIVISOR) -> int:
    """Scale a channel count by ``multiplier`` and round it legally (see :func:`make_divisible`).

    This is timm's ``round_channels`` rule, applied to every backbone layer.
    """
    return make_divisible(channels * multiplier, divisor)


def round_repeats(repeats: float, multiplier: float = 1.0) -> int:
    """Scale a repeat count by ``multiplier``, rounding up; the result is at least 1."""
    return max(1, int(math.ceil(repeats * multiplier - 1e-9)))


def round_resolution(pixels: float, multiple: int = RESOLUTION_MULTIPLE) -> int:
    """Round a side length in pixels to the nearest multiple of ``multiple``, at least
    :data:`MIN_RESOLUTION` (32) pixels."""
    return max(MIN_RESOLUTION, int(round(pixels / multiple)) * multiple)


@dataclass(frozen=True)
class CompoundCoefficients:
    """EfficientNet's compound coefficients: depth ``alpha``, width ``beta``, resolution ``gamma``.

    Each must be >= 1 (a coefficient below 1 would shrink the model as φ grows).
    """

    alpha: float = 1.2
    beta: float = 1.1
    gamma: float = 1.15

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            _require(_finite(value), name, f"must be a finite number, got {value!r}")
            _require(1.0 <= value <= 4.0, name, f"must be in [1, 4], got {value}")

    def cost_ratio(self) -> float:
        """The formula cost growth per unit of φ: ``alpha * beta**2 * gamma**2`` (dimensionless)."""
        return compound_cost_ratio(self.alpha, self.beta, self.gamma)


def compound_cost_ratio(alpha: float, beta: float, gamma: float) -> float:
    """EfficientNet's FLOPs growth per unit φ, ``alpha * beta**2 * gamma**2`` (dimensionless)."""
    return alpha * beta**2 * gamma**2


@dataclass(frozen=True)
class BifpnRule:
    """How the BiFPN and heads grow with φ.

    ``W = width_base * width_growth**phi`` (channels, rounded to a multiple of 8),
    ``D = ceil(depth_base + depth_step * phi)`` (cells, at least 1),
    ``D_head = head_depth_base + floor(phi / head_depth_period)`` (convs, at least 1).
    """

    width_base: float = 64.0
    width_growth: float = 1.35
    depth_base: float = 3.0
    depth_step: float = 1.0
    head_depth_base: int = 3
    head_depth_period: float = 3.0

    def __post_init__(self) -> None:
        _require(
            _finite(self.width_base) and self.width_base >= 8,
            "width_base",
            f"must be >= 8 channels, got {self.width_base!r}",
        )
        _require(
            _finite(self.width_growth) and 1.0 <= self.width_growth <= 4.0,
            "width_growth",
            f"must be in [1, 4], got {self.width_growth!r}",
        )
        _require(
            _finite(self.depth_base) and self.depth_base >= 1,
            "depth_base",
            f"must be >= 1 cell, got {self.depth_base!r}",
        )
        _require(
            _finite(self.depth_step) and 0 <= self.depth_step <= 4,
            "depth_step",
            f"must be in [0, 4] cells per unit of phi, got {self.depth_step!r}",
        )
        _require(
            isinstance(self.head_depth_base, int) and self.head_depth_base >= 1,
            "head_depth_base",
            f"must be an integer >= 1, got {self.head_depth_base!r}",
        )
        _require(
            _finite(self.head_depth_period) and self.head_depth_period > 0,
            "head_depth_period",
            f"must be > 0, got {self.head_depth_period!r}",
        )

    def channels(self, phi: float) -> int:
        """BiFPN width in channels at ``phi``, rounded to a multiple of 8."""
        return make_divisible(self.width_base * self.width_growth**phi)

    def repeats(self, phi: float) -> int:
        """Number of BiFPN cells at ``phi`` (ceil, at least 1)."""
        return round_repeats(self.depth_base + self.depth_step * phi)

    def head_repeats(self, phi: float) -> int:
        """Number of conv layers in each head at ``phi`` (at least 1)."""
        return max(1, self.head_depth_base + int(math.floor(phi / self.head_depth_period + 1e-9)))


RESOLUTION_KINDS = ("compound", "linear")


@dataclass(frozen=True)
class ResolutionRule:
    """Input side length as a function of φ, in pixels.

    ``kind="linear"``: ``base + step * phi`` (the EfficientDet paper: 512 + 128·φ).
    ``kind="compound"``: ``base * gamma**phi`` with gamma from :class:`CompoundCoefficients`.
    Both are rounded to a multiple of :data:`RESOLUTION_MULTIPLE` (8) pixels, at least 32.
    """

    kind: str = "linear"
    base: float = 512.0
    step: float = 128.0

    def __post_init__(self) -> None:
        _require(
            self.kind in RESOLUTION_KINDS,
            "kind",
            f"must be one of {', '.join(RESOLUTION_KINDS)}, got {self.kind!r}",
        )
        _require(
            _finite(self.base) and self.base >= 32,
            "base",
            f"must be >= 32 pixels, got {self.base!r}",
        )
        _require(
            _finite(self.step) and self.step >= 0,
            "step",
            f"must be >= 0 pixels per unit of phi, got {self.step!r}",
        )

    def resolution(self, phi: float, gamma: float) -> int:
        """Side length in pixels at ``phi``, a multiple of :data:`RESOLUTION_MULTIPLE`."""
        if self.kind == "linear":
            return round_resolution(self.base + self.step * phi)
        return round_resolution(self.base * gamma**phi)


@dataclass(frozen=True)
class ScalingSpec:
    """Everything that decides how a detector grows with φ.

    ``backbone_width`` and ``backbone_depth`` are the base multipliers at φ=0 (1.0 is B0).
    """

    coefficients: CompoundCoefficients = CompoundCoefficients()
    bifpn: BifpnRule = BifpnRule()
    resolution: ResolutionRule = ResolutionRule()
    backbone_width: float = 1.0
    backbone_depth: float = 1.0

    def __post_init__(self) -> None:
        _require(
            _finite(self.backbone_width) and 0.05 <= self.backbone_width <= 8,
            "backbone_width",
            f"must be in [0.05, 8], got {self.backbone_width!r}",
        )
        _require(
            _finite(self.backbone_depth) and 0.05 <= self.backbone_depth <= 8,
            "backbone_depth",
            f"must be in [0.05, 8], got {self.backbone_depth!r}",
        )


@dataclass(frozen=True)
class ScaledDimensions:
    """The legal dimensions of one family member.

    Multipliers are dimensionless, ``resolution`` is in pixels (a multiple of 8),
    ``bifpn_channels`` in channels (a multiple of 8), repeats are counts (>= 1).
    """

    phi: float
    width_multiplier: float
    depth_multiplier: float
    resolution: int
    bifpn_channels: int
    bifpn_repeats: int
    head_repeats: int


PHI_RANGE = (-8.0, 12.0)


def scale(spec: ScalingSpec, phi: float) -> ScaledDimensions:
    """Apply ``spec`` at compound coefficient ``phi``; the one place where multipliers are applied.

    Returns the backbone width and depth multipliers (``beta**phi`` and ``alpha**phi`` times the
    base multipliers, rounded to 4 decimals so that equal specs give equal configs), the input
    side in pixels, the BiFPN channels and cells and the head depth.
    """
    _require(
        _finite(phi) and PHI_RANGE[0] <= phi <= PHI_RANGE[1],
        "phi",
        f"must be a finite number in [{PHI_RANGE[0]}, {PHI_RANGE[1]}], got {phi!r}",
    )
    c = spec.coefficients
    return ScaledDimensions(
        phi=float(phi),
        width_multiplier=round(spec.backbone_width * c.beta**phi, 4),
        depth_multiplier=round(spec.backbone_depth * c.alpha**phi, 4),
        resolution=spec.resolution.resolution(phi, c.gamma),
        bifpn_channels=spec.bifpn.channels(phi),
        bifpn_repeats=spec.bifpn.repeats(phi),
        head_repeats=spec.bifpn.head_repeats(phi),
    )


PAPER_COEFFICIENTS = CompoundCoefficients(alpha=1.2, beta=1.1, gamma=1.15)
PAPER_BIFPN_RULE = BifpnRule()
PAPER_RESOLUTION_RULE = ResolutionRule(kind="linear", base=512.0, step=128.0)
PAPER_SPEC = ScalingSpec(
    coefficients=PAPER_COEFFICIENTS, bifpn=PAPER_BIFPN_RULE, resolution=PAPER_RESOLUTION_RULE
)
