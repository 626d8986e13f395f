"""An analytic accuracy stand-in for checking a search set-up, not a model of accuracy.

``acc = A − Σ_k c_k · m_k^(−p_k)`` over k ∈ {depth, width, resolution}, where ``m_k`` is the
multiplier at φ=1 relative to φ=0 (``alpha``, ``beta``, ``gamma``; on the measured path, the
effective multipliers of the built detectors). Each term has diminishing returns, so under the
cost constraint ``alpha · beta² · gamma² = target`` it has one optimum, known in closed form up to
a 1-D root (:func:`constrained_optimum`). Running the search against it shows whether the
sampler, the space and the constraint handling can find a known optimum in the trial budget,
in seconds instead of GPU-days. Nothing here predicts real AP.

Where the optimum lies: with log-multipliers ``x_k = ln m_k`` and log-cost weights
``w = (1, 2, 2)`` (depth, width, resolution), the Lagrange conditions are
``c_k · p_k · m_k^(−p_k) = λ · w_k``. So constants for a chosen optimum ``m*`` are
``c_k = λ · w_k · m*_k^(p_k) / p_k`` for any ``λ > 0``; ``studies/surrogate_compound.toml`` uses
this to put the optimum near EfficientNet's (1.2, 1.1, 1.15).

Optional Gaussian noise with standard deviation ``noise`` (in accuracy units) is seeded from the
study seed and the trial number, so that a rerun reproduces it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SurrogateConstants", "surrogate_accuracy", "constrained_optimum"]

_AXES = ("depth", "width", "resolution")
_LOG_COST_WEIGHTS = (1.0, 2.0, 2.0)


@dataclass(frozen=True)
class SurrogateConstants:
    """``A`` (the ceiling), the gains ``c`` and exponents ``p`` per axis, and the noise σ.

    ``c`` and ``p`` are (depth, width, resolution); all ``c`` and ``p`` are > 0, ``noise`` >= 0.
    """

    A: float
    c: tuple[float, float, float]
    p: tuple[float, float, float]
    noise: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "c", tuple(float(v) for v in self.c))
        object.__setattr__(self, "p", tuple(float(v) for v in self.p))
        if not math.isfinite(self.A):
            raise ValueError(f"objective.surrogate.A: must be a finite number, got {self.A!r}")
        for name, values in (("c", self.c), ("p", self.p)):
            if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
                raise ValueError(
                    f"objective.surrogate.{name}: needs depth, width and resolution, "
                    f"each a number > 0; got {values!r}"
                )
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"objective.surrogate.noise: must be >= 0, got {self.noise!r}")


def surrogate_accuracy(
    constants: SurrogateConstants,
    *,
    depth: float,
    width: float,
    resolution: float,
    noise_seed: tuple[int, ...] | None = None,
) -> float:
    """``A − Σ c_k·m_k^(−p_k)`` at the φ=1 multipliers (dimensionless), plus seeded noise.

    ``noise_seed`` (e.g. ``(study_seed, trial_number)``) seeds the Gaussian noise; without it, or
    with ``constants.noise == 0``, the value is exact.
    """
    multipliers = (depth, width, resolution)
    for axis, value in zip(_AXES, multipliers):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"surrogate: the {axis} multiplier must be > 0, got {value!r}")
    acc = constants.A - sum(c * m ** (-p) for c, m, p in zip(constants.c, multipliers, constants.p))
    if constants.noise > 0 and noise_seed is not None:
        acc += float(np.random.default_rng(list(noise_seed)).normal(0.0, constants.noise))
    return float(acc)


def constrained_optimum(constants: SurrogateConstants, *, target: float = 2.0) -> tuple[float, ...]:
    """The (depth, width, resolution) multipliers maximizing the noiseless surrogate subject to
    ``depth · width² · resolution² = target``, from the Lagrange conditions.

    ``m_k(λ) = (c_k·p_k / (λ·w_k))^(1/p_k)`` and ``λ`` solves ``Σ w_k·ln m_k(λ) = ln target``
    (monotone in ``ln λ``; bisection). Multipliers are not clamped to >= 1.
    """
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"target: must be > 0, got {target!r}")

    def log_multipliers(log_lam: float) -> list[float]:
        return [
            (math.log(c * p / w) - log_lam) / p
            for c, p, w in zip(constants.c, constants.p, _LOG_COST_WEIGHTS)
        ]

    def excess(log_lam: float) -> float:  # decreasing in log_lam
        return sum(w * x for w, x in zip(_LOG_COST_WEIGHTS, log_multipliers(log_lam))) - math.log(
            target
        )

    lo, hi = -200.0, 200.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
    return tuple(math.exp(x) for x in log_multipliers(0.5 * (lo + hi)))
