"""The search space and the cost constraint: closed-form and bisection solves, the band, the
grid's search space, and the measured ratio of built detectors."""

from __future__ import annotations

import math

import optuna
import pytest

from effscale.detector.scaling import RESOLUTION_MULTIPLE
from effscale.search.family import build_configs, proxy_dimensions
from effscale.search.objective import Objective
from effscale.search.space import (
    Choices,
    CostConstraint,
    Fixed,
    Range,
    SearchSpace,
    grid_search_space,
    grid_size,
    solve_gamma,
    suggest,
)
from effscale.search.study_file import parse_study_text
from tests.search_tests.conftest import STUDIES, edit_study

SPACE = SearchSpace(alpha=Range(1.0, 1.6), beta=Range(1.0, 1.4), gamma=Range(1.0, 1.6))
#: the paper's approximation, alpha * beta^2 * gamma^2 (the default is the measured MACs ratio)
FORMULA = CostConstraint(kind="formula")


def test_solve_formula_meets_target_exactly():
    point = suggest(optuna.trial.FixedTrial({"alpha": 1.2, "beta": 1.1}), SPACE, FORMULA)
    assert point.gamma == pytest.approx(math.sqrt(2 / (1.2 * 1.1**2)), abs=1e-12)
    assert point.ratio == pytest.approx(2.0, abs=1e-12)
    assert point.feasible and point.gamma_derived
    assert point.violation == pytest.approx(-0.05, abs=1e-12)


def test_solve_clamps_gamma_and_reports_the_miss():
    # alpha*beta^2 = 1.6*1.3^2 = 2.704 > 2: gamma would be 0.86, clamped to 1
    point = suggest(optuna.trial.FixedTrial({"alpha": 1.6, "beta": 1.3}), SPACE, FORMULA)
    assert point.gamma == 1.0 and point.ratio == pytest.approx(2.704)
    assert not point.feasible and point.violation == pytest.approx(0.352 - 0.05)


def test_band_mode_samples_gamma():
    band = CostConstraint(kind="formula", mode="band")
    inside = suggest(
        optuna.trial.FixedTrial({"alpha": 1.2, "beta": 1.1, "gamma": 1.15}), SPACE, band
    )
    assert inside.ratio == pytest.approx(1.920270) and inside.feasible
    outside = suggest(
        optuna.trial.FixedTrial({"alpha": 1.2, "beta": 1.1, "gamma": 1.3}), SPACE, band
    )
    assert outside.ratio == pytest.approx(2.45388) and not outside.feasible
    assert outside.violation == pytest.approx(2.45388 / 2 - 1 - 0.05, abs=1e-5)
    assert not outside.gamma_derived


def test_solve_gamma_on_a_step_function():
    # the ratio only changes at multiples of 1/8 in gamma: steps 1.0, 1.125, 1.25, ...
    ratio_of = lambda g: 1.6 * (math.floor(g * 8 + 1e-12) / 8) ** 2  # noqa: E731
    gamma = solve_gamma(ratio_of, target=2.0, low=1.0, high=1.6)
    # candidates 1.125 -> 2.025 (|0.025|) and 1.0 -> 1.6: the first is nearer
    assert ratio_of(gamma) == pytest.approx(2.025)
    assert 1.125 <= gamma < 1.125 + 2e-4
    assert solve_gamma(ratio_of, target=9.0, low=1.0, high=1.6) == 1.6
    assert solve_gamma(ratio_of, target=1.0, low=1.0, high=1.6) == 1.0


def test_grid_search_space():
    space = SearchSpace(
        alpha=Range(1.0, 1.2, step=0.1),
        beta=Choices((1.0, 1.1)),
        gamma=Range(1.0, 1.5),
        width_growth=Fixed(1.35),
        fusion=Choices(("fastattn", "sum")),
    )
    axes = grid_search_space(space, CostConstraint(mode="solve"))
    assert axes == {"alpha": [1.0, 1.1, 1.2], "beta": [1.0, 1.1], "fusion": ["fastattn", "sum"]}
    assert grid_size(axes) == 12
    with pytest.raises(ValueError, match='space.gamma: sampler = "grid" needs a list'):
        grid_search_space(space, CostConstraint(mode="band"))


SURROGATE = (STUDIES / "surrogate_compound.toml").read_text()


def test_proxy_is_fixed_and_phi1_grows_from_it():
    formula = edit_study(SURROGATE, {"constraint.kind": '"formula"'})  # gamma in closed form
    d = parse_study_text(formula, path="/tmp/s.toml")
    dims = proxy_dimensions(d.base)  # D0 at phi = -2 under the paper's rules
    assert (dims.width_multiplier, dims.depth_multiplier) == (0.8264, 0.6944)
    assert (dims.resolution, dims.bifpn_channels, dims.bifpn_repeats, dims.head_repeats) == (
        384,
        32,
        1,
        2,
    )
    a0, a1 = build_configs(
        d.base,
        suggest(
            optuna.trial.FixedTrial({"alpha": 1.0, "beta": 1.0}), d.space, d.constraint
        ).candidate(),
        num_classes=90,
    )
    b0, b1 = build_configs(
        d.base,
        suggest(
            optuna.trial.FixedTrial({"alpha": 1.3, "beta": 1.1}), d.space, d.constraint
        ).candidate(),
        num_classes=90,
    )
    assert a0 == b0 and a0.image_size == (384, 384) and a0.fpn.channels == 32
    assert b1.backbone.depth_multiplier == round(0.6944 * 1.3, 4)
    assert b1.backbone.width_multiplier == round(0.8264 * 1.1, 4)
    assert b1.fpn.channels == 40 and b1.fpn.repeats == 2 and b1.head.repeats == 2


def test_measured_solve_picks_the_nearest_legal_resolution():
    text = edit_study(SURROGATE, {"constraint.kind": '"measured"'})
    d = parse_study_text(text, path="/tmp/s.toml")
    objective = Objective(d, num_classes=90)
    point = suggest(
        optuna.trial.FixedTrial({"alpha": 1.2, "beta": 1.1}),
        d.space,
        d.constraint,
        measured_ratio=objective.measured_ratio,
    )
    r0 = proxy_dimensions(d.base).resolution
    # every legal phi=1 resolution reachable with gamma in [1, 1.6]: 384, 392, ..., 608
    ratios = {}
    for r1 in range(r0, int(r0 * 1.6) + 1, RESOLUTION_MULTIPLE):
        candidate = point.candidate().__class__(1.2, 1.1, r1 / r0, 1.35, 1.0, "fastattn")
        ratios[r1] = objective.measured_ratio(candidate)
    nearest = min(ratios, key=lambda r: abs(ratios[r] - 2.0))
    assert point.ratio == pytest.approx(ratios[nearest], rel=1e-12)
    assert point.feasible == (abs(point.ratio / 2 - 1) <= 0.05)
    assert list(ratios.values()) == sorted(ratios.values())  # monotone in gamma
