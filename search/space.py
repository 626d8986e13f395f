"""The search space of a scaling study and the compound cost constraint, sampled through Optuna.

A trial samples the compound coefficients (``alpha`` depth, ``beta`` width, ``gamma`` resolution),
the BiFPN growth (``width_growth``, ``depth_step``) and the fusion method. The cost of going from
the φ=0 proxy to φ=1 must stay near ``target`` (2.0 in EfficientNet):

* ``mode = "band"``: alpha, beta and gamma are all sampled; a point whose cost ratio lies outside
  ``target · (1 ± tolerance)`` is infeasible.
* ``mode = "solve"``: alpha and beta are sampled and gamma is derived so that the ratio meets
  ``target`` (closed form for the formula, bisection on the measured ratio), within gamma's
  bounds; the band is checked afterwards. Deriving gamma turns a thin 3-D shell into a 2-D space:
  on the analytic surrogate, TPE with 60 trials was off by 0.001-0.022 per coefficient in solve
  mode against 0.04-0.30 in band mode (5 seeds each, Optuna 5.0).

The cost ratio is dimensionless: ``kind = "measured"`` (the default) is the ratio of
multiply-adds (MACs) per image of the built φ=1 and φ=0 detectors, supplied by the caller as a
function of the candidate point; ``kind = "formula"`` is the paper's approximation,
EfficientNet's ``alpha * beta**2 * gamma**2``, which ignores rounding (at proxy sizes the real
ratio of "equal-cost" points under it differed by 43%).

Ranges and lists map onto Optuna distributions (``suggest_float`` / ``suggest_categorical``);
:func:`grid_search_space` turns the same space into the dict that ``GridSampler`` needs. In solve
mode gamma is derived, so it is never an Optuna parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from effscale.detector.scaling import compound_cost_ratio

from .errors import ParameterError

__all__ = [
    "CONSTRAINT_KINDS",
    "CONSTRAINT_MODES",
    "PARAM_NAMES",
    "Range",
    "Choices",
    "Fixed",
    "Param",
    "SearchSpace",
    "CostConstraint",
    "CandidatePoint",
    "SampledPoint",
    "suggest",
    "solve_gamma",
    "grid_search_space",
    "grid_size",
]

CONSTRAINT_KINDS = ("formula", "measured")
CONSTRAINT_MODES = ("band", "solve")
PARAM_NAMES = ("alpha", "beta", "gamma", "width_growth", "depth_step", "fusion")

#: gamma's precision in the measured solve (the ratio is piecewise constant in gamma anyway)
GAMMA_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Range:
    """A continuous range ``[low, high]``; with ``step``, the points ``low, low+step, .., high``."""

    low: float
    high: float
    step: float | None = None

    def points(self) -> tuple[float, ...]:
        """The grid points of a stepped range (rounded to 10 decimals)."""
        if self.step is None:
            raise ValueError("Range.points: the range has no step")
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return tuple(round(self.low + i * self.step, 10) for i in range(count))


@dataclass(frozen=True)
class Choices:
    """A list of values to choose from (a categorical parameter; a grid axis)."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class Fixed:
    """A value that is not searched."""

    value: Any


Param = Range | Choices | Fixed


@dataclass(frozen=True)
class SearchSpace:
    """What a trial may vary; multipliers are dimensionless, ``depth_step`` is BiFPN cells per φ.

    In solve mode ``gamma`` must be a :class:`Range`: the bounds of the derived value.
    """

    alpha: Param
    beta: Param
    gamma: Param
    width_growth: Param = Fixed(1.35)
    depth_step: Param = Fixed(1.0)
    fusion: Param = Fixed("fastattn")

    def param(self, name: str) -> Param:
        """The entry called ``name`` (one of :data:`PARAM_NAMES`)."""
        return getattr(self, name)


@dataclass(frozen=True)
class CostConstraint:
    """The compound cost constraint: the φ=1 / φ=0 cost ratio must lie in ``target·(1 ± tolerance)``.

    ``kind``: ``"measured"`` (the default: the ratio of multiply-adds of the built detectors) or
    ``"formula"`` (the paper's approximation alpha·beta²·gamma², blind to rounding).
    ``mode``: ``"band"`` (sample all three, reject outside the band) or ``"solve"`` (derive gamma).
    """

    target: float = 2.0
    tolerance: float = 0.05
    kind: str = "measured"
    mode: str = "solve"

    def violation(self, ratio: float) -> float:
        """Relative distance of ``ratio`` from ``target`` beyond the tolerance; <= 0 is feasible.

        This is the value given to Optuna's ``Trial.set_constraint``.
        """
        if not math.isfinite(ratio):
            return math.inf
        return abs(ratio / self.target - 1.0) - self.tolerance

    def band(self) -> tuple[float, float]:
        """The feasible cost ratios ``(target·(1 - tolerance), target·(1 + tolerance))``."""
        return self.target * (1 - self.tolerance), self.target * (1 + self.tolerance)


@dataclass(frozen=True)
class CandidatePoint:
    """A point of the space before its cost is known (the argument of a measured-cost function)."""

    alpha: float
    beta: float
    gamma: float
    width_growth: float
    depth_step: float
    fusion: str


@dataclass(frozen=True)
class SampledPoint:
    """One trial's point: the coefficients, the BiFPN growth, and how it meets the constraint.

    ``ratio`` is the cost growth φ=0 → φ=1 (dimensionless, formula or measured MACs);
    ``violation`` is :meth:`CostConstraint.violation` of it (<= 0 feasible);
    ``gamma_derived`` says that gamma was solved for rather than sampled.
    """

    alpha: float
    beta: float
    gamma: float
    width_growth: float
    depth_step: float
    fusion: str
    ratio: float
    feasible: bool
    violation: float
    gamma_derived: bool

    def candidate(self) -> CandidatePoint:
        """The point without its cost."""
        return CandidatePoint(
            self.alpha, self.beta, self.gamma, self.width_growth, self.depth_step, self.fusion
        )


CostFunction = Callable[[CandidatePoint], float]


def _suggest_one(trial: Any, name: str, param: Param) -> Any:
    if isinstance(param, Fixed):
        return param.value
    if isinstance(param, Choices):
        return trial.suggest_categorical(name, list(param.values))
    return trial.suggest_float(name, param.low, param.high, step=param.step)


def solve_gamma(
    ratio_of: Callable[[float], float],
    *,
    target: float,
    low: float,
    high: float,
    tolerance: float = GAMMA_TOLERANCE,
) -> float:
    """The gamma in ``[low, high]`` whose ratio is closest to ``target``, by bisection.

    ``ratio_of`` must be non-decreasing in gamma; it may be piecewise constant (the measured MACs
    ratio is: the resolution rounds to multiples of 8). Bisection brackets the step where the
    ratio crosses ``target`` to within ``tolerance`` and returns the bracket end whose ratio is
    nearer. Outside the reachable range it returns the nearer bound.
    """
    if ratio_of(low) >= target:
        return low
    if ratio_of(high) <= target:
        return high
    lo, hi = low, high
    while hi - lo > tolerance:
        mid = 0.5 * (lo + hi)
        if ratio_of(mid) < target:
            lo = mid
        else:
            hi = mid
    return lo if abs(ratio_of(lo) - target) < abs(ratio_of(hi) - target) else hi


def suggest(
    trial: Any,
    space: SearchSpace,
    constraint: CostConstraint,
    *,
    measured_ratio: CostFunction | None = None,
) -> SampledPoint:
    """Sample one point of ``space`` through ``trial`` and evaluate the cost constraint.

    ``measured_ratio`` gives the MACs ratio φ=1 / φ=0 of a candidate; it is required when
    ``constraint.kind == "measured"`` and unused otherwise. Nothing is written to the trial
    besides its parameters: the caller decides what to record (see :mod:`.objective`).
    """
    if constraint.kind == "measured" and measured_ratio is None:
        raise ValueError('suggest: constraint.kind = "measured" needs measured_ratio=')
    alpha = float(_suggest_one(trial, "alpha", space.alpha))
    beta = float(_suggest_one(trial, "beta", space.beta))
    width_growth = float(_suggest_one(trial, "width_growth", space.width_growth))
    depth_step = float(_suggest_one(trial, "depth_step", space.depth_step))
    fusion = str(_suggest_one(trial, "fusion", space.fusion))

    def ratio_at(gamma: float) -> float:
        if constraint.kind == "formula":
            return compound_cost_ratio(alpha, beta, gamma)
        return float(
            measured_ratio(  # type: ignore[misc]
                CandidatePoint(alpha, beta, gamma, width_growth, depth_step, fusion)
            )
        )

    if constraint.mode == "solve":
        bounds = space.gamma
        if not isinstance(bounds, Range):
            raise ValueError('space.gamma: mode = "solve" needs gamma bounds as {low, high}')
        if constraint.kind == "formula":
            exact = math.sqrt(constraint.target / (alpha * beta**2))
            gamma = min(max(exact, bounds.low), bounds.high)
        else:
            gamma = solve_gamma(
                ratio_at, target=constraint.target, low=bounds.low, high=bounds.high
            )
        derived = True
    else:
        gamma = float(_suggest_one(trial, "gamma", space.gamma))
        derived = False
    ratio = ratio_at(gamma)
    violation = constraint.violation(ratio)
    return SampledPoint(
        alpha=alpha,
        beta=beta,
        gamma=float(gamma),
        width_growth=width_growth,
        depth_step=depth_step,
        fusion=fusion,
        ratio=float(ratio),
        feasible=violation <= 0,
        violation=float(violation),
        gamma_derived=derived,
    )


def _axis(param: Param) -> list[Any] | None:
    if isinstance(param, Fixed):
        return None
    if isinstance(param, Choices):
        return list(param.values)
    if param.step is None:
        raise ValueError("grid needs a list or a range with step")
    return list(param.points())


def grid_search_space(space: SearchSpace, constraint: CostConstraint) -> dict[str, list[Any]]:
    """The ``GridSampler`` search space: one axis per searched parameter.

    Fixed values are not axes; in solve mode gamma is derived and is not an axis. Stepped ranges
    become their points. A range without step raises ``ValueError`` naming the parameter.
    """
    axes: dict[str, list[Any]] = {}
    for name in PARAM_NAMES:
        if name == "gamma" and constraint.mode == "solve":
            continue
        try:
            axis = _axis(space.param(name))
        except ValueError:
            raise ParameterError(
                f"space.{name}",
                'sampler = "grid" needs a list or a range with step',
                f"write {name} = [..] or add step = ..",
            ) from None
        if axis is not None:
            axes[name] = axis
    return axes


def grid_size(axes: Mapping[str, list[Any]]) -> int:
    """The number of grid points (the product of the axis lengths; 1 for no axes)."""
    return math.prod(len(values) for values in axes.values())
