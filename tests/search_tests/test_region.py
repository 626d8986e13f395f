"""Issue #14: answers with error bars. Every point is trained once per seed; the answer is the
region of points not significantly worse than the best (a paired t-test on shared seeds), with a
verdict; cost is measured on the built detectors and budgets are steps or epochs.

    python -m pytest tests/search_tests/test_region.py -s   # prints the coverage figures
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics

import optuna
import pytest
from scipy import stats

from effscale.detector.train import TrainResult
from effscale.search.cli import main
from effscale.search.confirm import confirm_study
from effscale.search.feasibility import sample_feasibility
from effscale.search.objective import Objective
from effscale.search.plots import plot_region
from effscale.search.runners import run_study
from effscale.search.runners.common import make_sampler
from effscale.search.study_file import StudyFileError, load_study_file, parse_study_text
from effscale.search.surrogate import constrained_optimum, surrogate_accuracy
from effscale.search.trials import (
    find_region,
    load_study,
    paired_p_value,
    scored_trials,
    seed_aps,
    study_confirmations,
    trial_coordinates,
)
from tests.search_tests.conftest import STUDIES, as_training, edit_study

SHIPPED = sorted(STUDIES.glob("*.toml"))


def _search(definition, n_trials: int):
    """The study's objective on an in-memory study with the study's own sampler."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(definition))
    study.optimize(Objective(definition, num_classes=90), n_trials=n_trials, catch=(Exception,))
    return study.get_trials()


def _surrogate(noise: float, *, seed: int = 0, kind: str = "measured", seeds=(0, 1, 2)):
    d = load_study_file(STUDIES / "surrogate_compound.toml")
    constants = dataclasses.replace(d.objective.surrogate, noise=noise)
    return d.replace(
        study=dataclasses.replace(d.study, seed=seed, seeds=tuple(seeds)),
        objective=dataclasses.replace(d.objective, surrogate=constants),
        constraint=dataclasses.replace(d.constraint, kind=kind),
    )


# ----------------------------------------------------------------- measured cost, budgets


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_study_measures_cost_with_a_reproducible_budget(path):
    d = load_study_file(path)
    assert d.constraint.kind == "measured"
    if d.objective.kind == "train":
        assert d.train.seconds is None and (d.train.steps or d.train.epochs)
    feasibility = sample_feasibility(d, samples=120)
    print(
        f"\nFIGURE solve-mode feasibility {path.name}: {feasibility.feasible}/"
        f"{feasibility.points} ({feasibility.fraction:.0%})"
    )
    assert feasibility.fraction >= 0.9


def test_a_wall_clock_budget_is_refused_in_a_training_study(tmp_path):
    text = as_training((STUDIES / "surrogate_compound.toml").read_text(), train="seconds = 20")
    with pytest.raises(
        StudyFileError,
        match=r"train.seconds: a wall-clock budget depends on "
        r"the machine's load.*give steps = N or epochs = N",
    ):
        parse_study_text(text, path=tmp_path / "s.toml")
    text = as_training((STUDIES / "surrogate_compound.toml").read_text(), train="steps = 20")
    assert parse_study_text(text, path=tmp_path / "s.toml").train.steps == 20


def test_seeds_and_the_budget_are_part_of_the_fingerprint(tmp_path):
    text = (STUDIES / "surrogate_compound.toml").read_text()
    one = parse_study_text(edit_study(text, {"study.seeds": "[0]"}), path=tmp_path / "s.toml")
    three = parse_study_text(text, path=tmp_path / "s.toml")
    assert three.study.seeds == (0, 1, 2) and one.study.seeds == (0,)
    assert one.fingerprint() != three.fingerprint()
    trained = as_training(text, train="steps = 20")
    longer = as_training(text, train="steps = 40")
    assert (
        parse_study_text(trained, path=tmp_path / "s.toml").fingerprint()
        != parse_study_text(longer, path=tmp_path / "s.toml").fingerprint()
    )
    for bad in ("[]", "[0, 0]", "[-1]", "3", '["a"]'):
        with pytest.raises(StudyFileError, match="study.seeds: must be a list of distinct"):
            parse_study_text(edit_study(text, {"study.seeds": bad}), path=tmp_path / "s.toml")


# ------------------------------------------------------------------------------ replicates


def test_a_point_is_scored_once_per_seed_and_its_value_is_the_mean():
    trials = _search(_surrogate(0.01), 6)
    for t in scored_trials(trials):
        aps = t.user_attrs["ap_per_seed"]
        assert t.user_attrs["seeds"] == [0, 1, 2] and t.user_attrs["n_seeds"] == 3
        assert len(set(aps)) == 3  # the seeds differ with noise
        assert t.value == pytest.approx(statistics.fmean(aps)) == t.user_attrs["ap_mean"]
        assert t.user_attrs["ap_std"] == pytest.approx(statistics.stdev(aps))
        assert seed_aps(t) == dict(zip([0, 1, 2], aps))


def _result(ap: float, steps: int, epochs: int = 1) -> TrainResult:
    metrics = {name: ap for name in ("ap", "ap50", "ap75", "aps", "apm", "apl")}
    return TrainResult(
        metrics=metrics,
        images_per_s=10.0,
        seconds=1.0,
        steps=steps,
        epochs=epochs,
        untrained_metrics={"ap": 0.02},
    )


def _training(surrogate_study, train: str, seeds: str = "[0, 1]"):
    # the formula cost keeps every sampled point feasible: these tests are about the seeds
    path = surrogate_study(
        {
            "study.seeds": seeds,
            "base.phi_proxy": "-4",
            "base.resolution": "64",
            "base.num_classes": "6",
            "constraint.kind": '"formula"',
        }
    )
    text = as_training(path.read_text(), "generate = {train = 8, val = 4, image_size = 64}", train)
    path.write_text(text)
    d = load_study_file(path)
    return d, dataclasses.replace(d.data, dir=d.folder)  # the injected trainers never read it


def test_the_pruner_sees_the_running_mean_of_the_seeds_so_far(surrogate_study):
    d, data = _training(surrogate_study, "epochs = 2", seeds="[0, 1]")
    d = d.replace(pruner=dataclasses.replace(d.pruner, kind="median"))
    curves = {0: [0.1, 0.3], 1: [0.2, 0.5]}  # seed -> AP after epochs 1 and 2

    def trainer(config, *, settings, on_epoch=None, **kw):
        for epoch, ap in enumerate(curves[settings.seed], start=1):
            on_epoch(epoch, {"ap": ap})
        return _result(curves[settings.seed][-1], steps=4, epochs=2)

    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(d, num_classes=6, data=data, trainer=trainer), n_trials=1)
    (trial,) = study.trials
    # step = epochs trained over the seeds so far; value = mean of the seeds that reported it
    assert trial.intermediate_values == {
        1: 0.1,
        2: 0.3,
        3: pytest.approx(0.15),
        4: pytest.approx(0.4),
    }
    assert trial.value == pytest.approx(0.4)


def test_too_few_steps_and_an_untrained_ap_are_flagged(surrogate_study, capsys):
    d, data = _training(surrogate_study, "steps = 10")
    results = iter(
        [
            _result(0.3, steps=10),
            _result(0.3, steps=7),
            _result(0.01, steps=10),
            _result(0.01, steps=10),
        ]
    )

    def trainer(config, **kw):
        return next(results)

    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(d, num_classes=6, data=data, trainer=trainer), n_trials=2)
    short, flat = study.trials
    assert short.user_attrs["warnings"] == ["fewer steps than asked (7 of 10)"]
    assert short.user_attrs["untrained_ap"] == 0.02
    assert flat.user_attrs["warnings"] == [
        "AP 0.0100 is not above an untrained model's 0.0200: raise [train] steps or use easier data"
    ]


# -------------------------------------------------------------------------------- the region


def test_the_paired_p_value_is_scipys_one_sided_paired_t_test():
    better, other = {0: 0.31, 1: 0.33, 2: 0.30}, {0: 0.30, 1: 0.31, 2: 0.305, 3: 0.9}
    expected = stats.ttest_rel([0.31, 0.33, 0.30], [0.30, 0.31, 0.305], alternative="greater")
    assert paired_p_value(better, other) == pytest.approx(expected.pvalue)
    assert paired_p_value({0: 0.3}, {0: 0.2}) is None  # one shared seed: untestable
    assert paired_p_value({0: 0.3, 1: 0.4}, {0: 0.2, 1: 0.3}) == 0.0  # no noise, always ahead
    assert paired_p_value({0: 0.3, 1: 0.4}, {0: 0.3, 1: 0.4}) == 1.0


def test_without_noise_the_region_is_the_best_point_alone():
    d = load_study_file(STUDIES / "surrogate_compound.toml")
    assert d.objective.surrogate.noise == 0 and d.study.seeds == (0, 1, 2)
    trials = _search(d, 40)
    region = find_region(trials)
    best = max(scored_trials(trials), key=lambda t: t.value)
    assert region.members == (best.number,) and region.verdict == "resolved"


def test_one_seed_gives_no_error_bars_and_says_so():
    trials = _search(_surrogate(0.0, seeds=(0,)), 10)
    region = find_region(trials)
    assert region.verdict == "noise" and len(region.members) == len(scored_trials(trials))
    assert "one seed per point gives no error bars; set [study] seeds = [0, 1, 2]" in region.advice


@pytest.mark.slow
def test_the_region_covers_the_optimum_and_leaves_out_the_clearly_worse():
    """The acceptance test of #14: the surrogate with noise and 3 seeds, 20 study seeds. Cost is
    the formula here, the one constraint under which the true optimum is known exactly."""
    sigma = 0.001
    covered, far, far_out, verdicts = 0, 0, 0, {}
    for seed in range(20):
        d = _surrogate(sigma, seed=seed, kind="formula")
        constants = d.objective.surrogate
        optimum = constrained_optimum(constants, target=d.constraint.target)
        best_acc = surrogate_accuracy(
            constants, depth=optimum[0], width=optimum[1], resolution=optimum[2]
        )
        trials = _search(d, 40)
        region = find_region(trials)
        verdicts[region.verdict] = verdicts.get(region.verdict, 0) + 1
        ranges = region.to_dict()["region_ranges"]
        covered += all(
            lo <= value <= hi
            for (lo, hi), value in zip((ranges["alpha"], ranges["beta"], ranges["gamma"]), optimum)
        )
        for t in scored_trials(trials):
            c = trial_coordinates(t)
            true = surrogate_accuracy(
                constants, depth=c["alpha"], width=c["beta"], resolution=c["gamma"]
            )
            if true < best_acc - 6 * sigma:
                far += 1
                far_out += t.number not in region.members
    print(
        f"\nFIGURE region coverage: true optimum inside region_ranges in {covered}/20 runs; "
        f"trials more than 6 sigma below it left out: {far_out}/{far}; verdicts {verdicts}"
    )
    assert covered >= 18
    assert far >= 20 and far_out >= 0.9 * far


def test_the_region_plot_draws_each_trials_mean_and_interval(tmp_path):
    trials = _search(_surrogate(0.002, kind="formula"), 12)
    path = tmp_path / "region.png"
    data = plot_region(_surrogate(0.002, kind="formula"), trials, path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_number = {t.number: t for t in scored_trials(trials)}
    assert set(data.numbers) == set(by_number) and len(data.numbers) >= 5
    region = find_region(trials)
    assert data.region == region.members and data.best == region.best
    assert data.verdict == region.verdict
    for number, ap, error in zip(data.numbers, data.ap, data.ap_error, strict=True):
        aps = by_number[number].user_attrs["ap_per_seed"]
        assert ap == pytest.approx(statistics.fmean(aps))
        low, high = stats.t.interval(0.95, len(aps) - 1, loc=ap, scale=stats.sem(aps))
        assert error == pytest.approx((high - low) / 2) and error > 0


# -------------------------------------------------------------- status, confirm, the quickstart


def test_status_json_carries_the_region_and_the_verdict(surrogate_study, capsys):
    path = surrogate_study(
        {
            "study.n_trials": "12",
            "study.seeds": "[0, 1, 2]",
            "constraint.kind": '"measured"',
            "objective.surrogate.noise": "0.002",
        },
        name="noisy.toml",
    )
    run_study(load_study_file(path), quiet=True)
    capsys.readouterr()
    assert main(["status", str(path), "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    region = find_region(load_study(load_study_file(path)).get_trials())
    assert document["region"] == list(region.members) and document["verdict"] == region.verdict
    assert document["verdict"] in ("resolved", "tied", "noise")
    assert set(document["region_ranges"]) == {"alpha", "beta", "gamma"}
    low, high = document["cost_ratio_range"]
    assert 1.9 <= low <= high <= 2.1
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"verdict: {region.advice}" in out and "cost ratios of the feasible trials" in out


def test_confirm_adds_seeds_to_the_top_trials_and_never_overwrites(surrogate_study, capsys):
    path = surrogate_study(
        {"study.n_trials": "10", "study.seeds": "[0, 1, 2]", "objective.surrogate.noise": "0.002"}
    )
    d = load_study_file(path)
    run_study(d, quiet=True)
    first = confirm_study(d, top_k=2, seeds=2)
    assert first.seeds == (3, 4) and len(first.trials) == 2
    study = load_study(d)
    stored = study_confirmations(study)
    for number in first.trials:
        trial = study.trials[number]
        assert stored[number]["seeds"] == [3, 4]
        aps = seed_aps(trial, stored)
        assert sorted(aps) == [0, 1, 2, 3, 4]
        assert aps[3] == stored[number]["ap_per_seed"][0]
        assert trial.user_attrs["seeds"] == [0, 1, 2]  # the trial itself is untouched
    again = confirm_study(d, top_k=2, seeds=1)
    assert again.seeds == (5,)
    after = study_confirmations(load_study(d))
    for number in first.trials:
        if number in again.trials:
            assert after[number]["seeds"] == [3, 4, 5]
        assert after[number]["ap_per_seed"][:2] == stored[number]["ap_per_seed"]
    assert main(["confirm", str(path), "--top-k", "1", "--seeds", "1", "--quiet"]) == 0
    assert "verdict: " in capsys.readouterr().out


def test_a_tiny_quickstart_ends_with_a_verdict(tmp_path, capsys):
    """The quickstart's settings, cut to two trials of a few steps (the real one: README)."""
    text = edit_study(
        (STUDIES / "quickstart.toml").read_text(),
        {"study.n_trials": "2", "train.steps": "2", "train.batch_size": "4"},
    )
    text = text.replace("train = 160, val = 40", "train = 8, val = 4")
    path = tmp_path / "quickstart.toml"
    path.write_text(text)
    assert main(["search", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith("verdict: ") or out[-1].startswith("verdict: ")
    assert main(["status", str(path), "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {"region", "region_ranges", "verdict"} <= set(document)
    for t in document["trials"]:
        if t["state"] == "COMPLETE":
            assert t["user_attrs"]["n_seeds"] == 2 and math.isfinite(t["values"][0])
