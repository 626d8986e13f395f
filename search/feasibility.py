"""How much of a study's space meets its cost constraint: the points of the space (every grid
point, or uniform random samples) put through the study's own sampling of a point (solve or
band mode, measured or formula cost), before any trial is run.

A study whose points mostly miss the band wastes its trials; the shipped studies keep at least
90% feasible (``benchmarks/solve_feasibility.py`` prints the figures, a test asserts them).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import optuna

from .data import study_num_classes
from .definition import StudyDefinition
from .errors import ParameterError
from .family import CostMeter
from .space import Range, SampledPoint, suggest

__all__ = ["Feasibility", "sample_feasibility"]


@dataclass(frozen=True)
class Feasibility:
    """What :func:`sample_feasibility` found: ``points`` tried, how many were ``feasible``, how
    many missed because the derived γ hit its bounds (``at_bound``: the coefficients alone
    already over- or undershoot the target) and the lowest and highest cost ratio of the
    feasible ones (dimensionless)."""

    points: int
    feasible: int
    at_bound: int
    ratio_range: tuple[float, float] | None

    @property
    def fraction(self) -> float:
        """The feasible share of the points, in [0, 1]."""
        return self.feasible / self.points if self.points else 0.0


def _grid_points(definition: StudyDefinition) -> list[dict[str, object]]:
    axes = definition.grid()
    names = sorted(axes)
    return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


def sample_feasibility(
    definition: StudyDefinition, *, samples: int = 200, seed: int = 0
) -> Feasibility:
    """Put ``samples`` uniform random points of the study's space (every point of a grid study)
    through its sampling of a point (:func:`.space.suggest`) and count those whose cost ratio
    lies in the band. The cost is the study's: measured on the built detectors (multiply-adds)
    or the formula."""
    if not isinstance(samples, int) or samples < 1:
        raise ParameterError("samples", f"must be an integer >= 1, got {samples!r}", "e.g. 200")
    d = definition
    meter = CostMeter(d.base, num_classes=study_num_classes(d))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    fixed = _grid_points(d) if d.study.sampler == "grid" else [None] * samples
    points: list[SampledPoint] = []
    measured = meter.ratio if d.constraint.kind == "measured" else None
    for params in fixed:
        if params is not None:
            fixed_trial = optuna.trial.FixedTrial(params)
            points.append(suggest(fixed_trial, d.space, d.constraint, measured_ratio=measured))
            continue
        trial = study.ask()
        points.append(suggest(trial, d.space, d.constraint, measured_ratio=measured))
        study.tell(trial, 0.0)
    gamma = d.space.gamma
    at_bound = sum(
        1
        for p in points
        if not p.feasible
        and p.gamma_derived
        and isinstance(gamma, Range)
        and p.gamma in (gamma.low, gamma.high)
    )
    ratios = [p.ratio for p in points if p.feasible]
    return Feasibility(
        points=len(points),
        feasible=sum(p.feasible for p in points),
        at_bound=at_bound,
        ratio_range=(min(ratios), max(ratios)) if ratios else None,
    )
