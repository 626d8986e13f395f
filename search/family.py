"""From a sampled point to detectors: the proxy (φ=0), the trial's φ=1 model, and the D0…D7-style
family that the point scales to.

The proxy is the study's ``[base]`` scaled to ``phi_proxy`` with the paper's rules, and is the
same in every trial; the φ=1 model grows from it by the point's multipliers (``alpha`` depth,
``beta`` width, ``gamma`` resolution, ``width_growth`` BiFPN channels, ``depth_step`` BiFPN
cells). This is EfficientNet's step 1: fix φ=1, search the coefficients.

A family applies the same coefficients over integer φ with legal rounding. It grows from one of
two anchors:

* ``"base"`` (default): φ=0 is the study's ``[base]`` itself (for ``preset = "d0"``: D0 at
  512 px); φ grows it by the coefficients: backbone width ``beta**phi`` and depth
  ``alpha**phi``, resolution ``resolution_base * gamma**phi``, BiFPN ``W = W0 *
  width_growth**phi`` and ``D = D0 + depth_step * phi``, heads ``+1`` conv every
  ``head_depth_period``.
* ``"proxy"``: φ=0 is the search's proxy, exactly as in the search, so the member at φ=1 is
  the trial's trained model.

``backbone_table="official"`` replaces each member's backbone by the released EfficientDet's
B0…B6 at that φ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from effscale.detector.complexity import Complexity, count_complexity
from effscale.detector.config import PRESETS, BackboneConfig, DetectorConfig, from_scaling
from effscale.detector.scaling import (
    PAPER_COEFFICIENTS,
    BifpnRule,
    CompoundCoefficients,
    ResolutionRule,
    ScaledDimensions,
    ScalingSpec,
    scale,
)

from .definition import BaseSection, StudyDefinition
from .errors import ParameterError
from .space import PARAM_NAMES, CandidatePoint, Choices, CostConstraint, Fixed, Param, SearchSpace

__all__ = [
    "ANCHORS",
    "BACKBONE_TABLES",
    "OFFICIAL_BACKBONES",
    "PAPER_POINT",
    "proxy_dimensions",
    "family_spec",
    "study_family_spec",
    "build_configs",
    "corner_points",
    "check_buildable",
    "CostMeter",
    "effective_multipliers",
    "FamilyMember",
    "Family",
    "derive_family",
]

ANCHORS = ("base", "proxy")
BACKBONE_TABLES = ("compound", "official")

#: the backbone (width, depth) multipliers of the released EfficientDet D0..D7 (D7 reuses B6)
OFFICIAL_BACKBONES: dict[int, tuple[float, float]] = {
    int(name[1:]): (c.backbone.width_multiplier, c.backbone.depth_multiplier)
    for name, c in PRESETS.items()
}

#: the EfficientDet paper's point: alpha 1.2, beta 1.1, gamma 1.15, BiFPN ×1.35 and +1 cell
PAPER_POINT = CandidatePoint(
    alpha=PAPER_COEFFICIENTS.alpha,
    beta=PAPER_COEFFICIENTS.beta,
    gamma=PAPER_COEFFICIENTS.gamma,
    width_growth=1.35,
    depth_step=1.0,
    fusion="fastattn",
)


# ------------------------------------------------------------------------------- the search


def proxy_dimensions(base: BaseSection) -> ScaledDimensions:
    """The proxy's (search φ=0) dimensions: the base at ``phi_proxy`` under the paper's rules
    (coefficients 1.2/1.1/1.15 for backbone and resolution, BiFPN ×1.35 width and +1 cell per φ),
    with ``base.resolution`` (pixels) replacing the resolution when given."""
    spec = ScalingSpec(
        coefficients=PAPER_COEFFICIENTS,
        bifpn=base.bifpn,
        resolution=ResolutionRule(kind="compound", base=float(base.resolution_base), step=0.0),
        backbone_width=base.backbone_width,
        backbone_depth=base.backbone_depth,
    )
    dims = scale(spec, base.phi_proxy)
    if base.resolution is not None:
        dims = replace(dims, resolution=base.resolution)
    return dims


def family_spec(base: BaseSection, point: CandidatePoint) -> ScalingSpec:
    """The scaling spec whose φ=0 is the proxy and whose φ=1 applies ``point``'s multipliers."""
    d0 = proxy_dimensions(base)
    return ScalingSpec(
        coefficients=CompoundCoefficients(alpha=point.alpha, beta=point.beta, gamma=point.gamma),
        bifpn=BifpnRule(
            width_base=float(d0.bifpn_channels),
            width_growth=point.width_growth,
            depth_base=float(d0.bifpn_repeats),
            depth_step=point.depth_step,
            head_depth_base=d0.head_repeats,
            head_depth_period=base.bifpn.head_depth_period,
        ),
        resolution=ResolutionRule(kind="compound", base=float(d0.resolution), step=0.0),
        backbone_width=d0.width_multiplier,
        backbone_depth=d0.depth_multiplier,
    )


def study_family_spec(
    base: BaseSection, point: CandidatePoint, *, anchor: str = "base"
) -> ScalingSpec:
    """The scaling spec of a study's family for ``point`` from ``anchor`` (see the module
    docstring): ``"proxy"`` is :func:`family_spec`; ``"base"`` grows ``base`` itself (its
    backbone multipliers, BiFPN and heads at ``resolution_base`` pixels) by the point's
    coefficients (compound resolution rule)."""
    if anchor not in ANCHORS:
        raise ParameterError(
            "anchor", f"unknown value {anchor!r}", f"choose one of {', '.join(ANCHORS)}"
        )
    if anchor == "proxy":
        return family_spec(base, point)
    return ScalingSpec(
        coefficients=CompoundCoefficients(alpha=point.alpha, beta=point.beta, gamma=point.gamma),
        bifpn=BifpnRule(
            width_base=float(base.bifpn.width_base),
            width_growth=point.width_growth,
            depth_base=float(base.bifpn.depth_base),
            depth_step=point.depth_step,
            head_depth_base=base.bifpn.head_depth_base,
            head_depth_period=base.bifpn.head_depth_period,
        ),
        resolution=ResolutionRule(kind="compound", base=float(base.resolution_base), step=0.0),
        backbone_width=base.backbone_width,
        backbone_depth=base.backbone_depth,
    )


def build_configs(
    base: BaseSection, point: CandidatePoint, *, num_classes: int
) -> tuple[DetectorConfig, DetectorConfig]:
    """The φ=0 (proxy) and φ=1 detector configs for ``point``."""
    spec = family_spec(base, point)
    proxy, grown = (
        from_scaling(
            spec, phi, num_classes=num_classes, fusion=point.fusion, name=f"proxy-phi{phi}"
        )
        for phi in (0, 1)
    )
    return proxy, grown


def _extremes(param: Param) -> tuple[Any, Any]:
    if isinstance(param, Fixed):
        return param.value, param.value
    if isinstance(param, Choices):
        if all(isinstance(v, str) for v in param.values):
            return param.values[0], param.values[0]
        return min(param.values), max(param.values)
    return param.low, param.high


def corner_points(space: SearchSpace, constraint: CostConstraint) -> tuple[CandidatePoint, ...]:
    """The smallest and the largest point of ``space`` (every multiplier at its low or high end),
    used to check once that all models of the study can be built."""
    ends = {name: _extremes(space.param(name)) for name in PARAM_NAMES}
    return tuple(CandidatePoint(**{name: ends[name][i] for name in PARAM_NAMES}) for i in (0, 1))


def check_buildable(definition: StudyDefinition) -> None:
    """Build the proxy and the largest φ=1 model of the study once, so that bad sizes fail
    before any trial; raises :class:`.ParameterError` naming ``base``."""
    d = definition
    for point in corner_points(d.space, d.constraint):
        try:
            build_configs(d.base, point, num_classes=d.base.num_classes or 90)
        except ValueError as exc:
            raise ParameterError(
                "base", f"the proxy models cannot be built ({exc})", "raise phi_proxy or resolution"
            ) from None


class CostMeter:
    """The multiply-adds per image of the proxy and φ=1 detectors of points of a study's space,
    each config counted once (:func:`count_complexity`)."""

    def __init__(self, base: BaseSection, *, num_classes: int) -> None:
        self.base = base
        self.num_classes = num_classes
        self._cache: dict[DetectorConfig, Complexity] = {}

    def complexity(self, config: DetectorConfig) -> Complexity:
        """Params, MACs and activations of ``config`` (per image)."""
        if config not in self._cache:
            self._cache[config] = count_complexity(config)
        return self._cache[config]

    def ratio(self, point: CandidatePoint) -> float:
        """MACs of ``point``'s φ=1 model over the proxy's (dimensionless)."""
        phi0, phi1 = build_configs(self.base, point, num_classes=self.num_classes)
        return self.complexity(phi1).macs / self.complexity(phi0).macs


def effective_multipliers(phi0: DetectorConfig, phi1: DetectorConfig) -> tuple[float, float, float]:
    """(depth, width, resolution) multipliers of ``phi1`` over ``phi0`` after rounding."""
    return (
        phi1.backbone.depth_multiplier / phi0.backbone.depth_multiplier,
        phi1.backbone.width_multiplier / phi0.backbone.width_multiplier,
        phi1.image_size[0] / phi0.image_size[0],
    )


# ------------------------------------------------------------------------------- the family


@dataclass(frozen=True)
class FamilyMember:
    """One detector of a family: ``name`` (``<prefix><phi>``), ``phi``, its ``config`` and its
    measured ``complexity`` (params; MACs and activations per image)."""

    name: str
    phi: int
    config: DetectorConfig
    complexity: Complexity

    @property
    def gmacs(self) -> float:
        """Multiply-adds per image, in billions."""
        return self.complexity.macs / 1e9


@dataclass(frozen=True)
class Family:
    """A derived family: its members by φ, the ``spec`` they come from, the fusion method and
    the backbone rule (``"compound"``: ``beta**phi``/``alpha**phi``; ``"official"``: B0..B6)."""

    members: tuple[FamilyMember, ...]
    spec: ScalingSpec
    fusion: str
    backbone_table: str = "compound"
    #: members of the asked range left out by ``up_to_legal``: name -> why they are not legal
    left_out: tuple[tuple[str, str], ...] = ()


def _official_backbone(phi: int) -> BackboneConfig:
    if phi not in OFFICIAL_BACKBONES:
        raise ParameterError(
            "backbone_table",
            f"the official table covers φ = 0..7 (B0..B6), got φ = {phi}",
            "keep φ within 0-7 or use the compound backbone table",
        )
    width, depth = OFFICIAL_BACKBONES[phi]
    return BackboneConfig(width_multiplier=width, depth_multiplier=depth)


def derive_family(
    spec: ScalingSpec,
    phis: Sequence[int],
    *,
    fusion: str = "fastattn",
    num_classes: int = 90,
    prefix: str = "d",
    backbone_table: str = "compound",
    up_to_legal: bool = False,
) -> Family:
    """Apply ``spec`` at every φ of ``phis`` with legal rounding (:func:`from_scaling`) and
    measure each member (:func:`count_complexity`: params, MACs per image, activations).

    With ``up_to_legal`` (the default range of an export, where the user asked for no φ in
    particular) the family stops before the first member that is not a legal detector, the
    first excepted: those left out are listed in :attr:`Family.left_out`.

    ``backbone_table="official"`` replaces the backbone by the released EfficientDet's B0..B6 at
    each φ (integer φ in 0..7). A member that cannot be built legally raises a one-line
    :class:`.ParameterError` naming ``phis`` and the member.
    """
    if backbone_table not in BACKBONE_TABLES:
        raise ParameterError(
            "backbone_table",
            f"unknown value {backbone_table!r}",
            f"choose one of {', '.join(BACKBONE_TABLES)}",
        )
    if not phis:
        raise ParameterError("phis", "the range has no members", "give e.g. 0-7")
    if not isinstance(prefix, str) or not prefix.strip() or any(c in prefix for c in "/\\ "):
        raise ParameterError("prefix", f"{prefix!r} cannot start a file name", "use e.g. d")
    members: list[FamilyMember] = []
    for index, phi in enumerate(phis):
        name = f"{prefix}{phi}"
        try:
            config = from_scaling(spec, phi, num_classes=num_classes, fusion=fusion, name=name)
            if backbone_table == "official":
                config = config.replace(backbone=_official_backbone(phi))
        except ParameterError:
            raise
        except ValueError as exc:
            why = " ".join(str(exc).split())
            if up_to_legal and members:
                left = tuple((f"{prefix}{p}", why if p == phi else "") for p in phis[index:])
                return Family(
                    members=tuple(members),
                    spec=spec,
                    fusion=fusion,
                    backbone_table=backbone_table,
                    left_out=left,
                )
            fix = (f"use `phis` {phis[0]}-{phi - 1}" if phi > phis[0] else "lower the φ range") + (
                " or smaller coefficients"
            )
            raise ParameterError(
                "phis",
                f"member {name} (φ = {phi}) is not a legal detector ({why})",
                fix,
            ) from None
        members.append(
            FamilyMember(name=name, phi=phi, config=config, complexity=count_complexity(config))
        )
    return Family(members=tuple(members), spec=spec, fusion=fusion, backbone_table=backbone_table)
