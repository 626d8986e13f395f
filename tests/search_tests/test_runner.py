"""Whole searches on the analytic surrogate: the samplers find known optima, infeasible points
are never evaluated but reach the sampler, counts are exact across workers and reruns."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import optuna
import pytest

import effscale.search.objective
import effscale.search.storage
from effscale.search.cli import main
from effscale.search.runners.optuna_runner import run_study
from effscale.search.study_file import load_study_file
from effscale.search.surrogate import surrogate_accuracy
from tests.search_tests.test_surrogate import OTHER, scipy_optimum

JOURNAL = "journal:///study.journal"


def load(path, storage: str = JOURNAL):
    d = load_study_file(path)
    storage_obj = effscale.search.storage.open_storage(
        effscale.search.storage.resolve_storage_url(storage, base_dir=d.folder)
    )
    return optuna.load_study(study_name=d.study.name, storage=storage_obj)


def best_coordinates(study) -> tuple[float, float, float]:
    best = study.best_trial
    return best.params["alpha"], best.params["beta"], best.user_attrs["gamma"]


def test_tpe_finds_the_shipped_optimum(surrogate_study):
    d = load_study_file(surrogate_study())
    summary = run_study(d, storage=JOURNAL, quiet=True)
    assert (summary.started, summary.n_complete + summary.n_pruned, summary.n_failed) == (60, 60, 0)
    study = load(d.path)
    assert summary.best_number == study.best_trial.number
    found = best_coordinates(study)
    optimum = scipy_optimum(d.objective.surrogate)
    assert np.max(np.abs(np.subtract(found, optimum))) <= 0.05, (found, optimum)
    assert study.best_trial.user_attrs["cost_ratio"] == pytest.approx(2.0, abs=1e-9)


def test_tpe_finds_a_moved_optimum(surrogate_study):
    path = surrogate_study(
        {
            "objective.surrogate.A": str(OTHER.A),
            "objective.surrogate.c": "{depth = 0.1104, width = 0.1082, resolution = 0.1321}",
            "objective.surrogate.p": "{depth = 1.5, width = 2.0, resolution = 2.0}",
        }
    )
    d = load_study_file(path)
    assert d.objective.surrogate == OTHER
    run_study(d, storage=JOURNAL, quiet=True)
    found = best_coordinates(load(path))
    optimum = scipy_optimum(OTHER)  # (1.40, 1.04, 1.149): far from the shipped (1.21, 1.11, 1.16)
    assert abs(optimum[0] - 1.21) > 0.15
    assert np.max(np.abs(np.subtract(found, optimum))) <= 0.05, (found, optimum)


def test_grid_hits_the_best_grid_point_exactly(surrogate_study):
    path = surrogate_study(
        {
            "study.sampler": '"grid"',
            "space.alpha": "{low = 1.0, high = 1.5, step = 0.05}",
            "space.beta": "{low = 1.0, high = 1.3, step = 0.05}",
        }
    )
    text = path.read_text().replace("n_trials = 60\n", "")
    path.write_text(text)
    d = load_study_file(path)
    assert d.target_trials() == 11 * 7
    run_study(d, storage=JOURNAL, quiet=True)
    study = load(path)
    visited = [(t.params["alpha"], t.params["beta"]) for t in study.trials]
    assert len(visited) == len(set(visited)) == 77
    # enumerate the grid independently: gamma from the constraint, clamped to [1, 1.6]
    best, best_acc = None, -math.inf
    for i, j in itertools.product(range(11), range(7)):
        alpha, beta = round(1.0 + 0.05 * i, 10), round(1.0 + 0.05 * j, 10)
        gamma = min(max(math.sqrt(2 / (alpha * beta**2)), 1.0), 1.6)
        if abs(alpha * beta**2 * gamma**2 / 2 - 1) > 0.05:
            continue
        acc = surrogate_accuracy(d.objective.surrogate, depth=alpha, width=beta, resolution=gamma)
        if acc > best_acc:
            best, best_acc = (alpha, beta), acc
    assert (study.best_params["alpha"], study.best_params["beta"]) == best == (1.2, 1.1)
    assert study.best_value == pytest.approx(best_acc, abs=1e-12)


def test_band_mode_never_evaluates_infeasible_points(surrogate_study):
    calls = []
    path = surrogate_study(
        {
            "constraint.mode": '"band"',
            "study.n_trials": "30",
            "space.gamma": "{low = 1.0, high = 1.6}",
        }
    )
    d = load_study_file(path)
    original = effscale.search.objective.surrogate_accuracy

    def counting(constants, **kw):  # records each evaluation; the value is the real one
        calls.append(kw)
        return original(constants, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(effscale.search.objective, "surrogate_accuracy", counting)
        run_study(d, storage=JOURNAL, quiet=True)
    trials = load(path).trials
    infeasible = [t for t in trials if t.state.name == "PRUNED"]
    feasible = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(trials) == 30 and infeasible and feasible
    assert len(calls) == len(feasible)
    for t in infeasible:
        violation = t.system_attrs["constraints:cost_ratio"]  # where Trial.set_constraint stores it
        assert t.constraints == {"cost_ratio": violation} and violation > 0
        assert violation == pytest.approx(abs(t.user_attrs["cost_ratio"] / 2 - 1) - 0.05)
        assert t.user_attrs["feasible"] is False and "ap" not in t.user_attrs
        assert "outside [1.9000, 2.1000]" in t.user_attrs["infeasible_reason"]
        assert t.duration.total_seconds() < 2
    for t in feasible:
        assert t.constraints["cost_ratio"] <= 0 and t.user_attrs["feasible"] is True
        assert 1.9 <= t.user_attrs["cost_ratio"] <= 2.1


def test_a_failing_trial_is_recorded_and_a_rerun_completes_the_study(surrogate_study):
    path = surrogate_study({"study.n_trials": "6"})
    d = load_study_file(path)
    original = effscale.search.objective.surrogate_accuracy
    calls = []

    def failing_once(constants, **kw):  # fault injection: the second evaluation raises
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return original(constants, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(effscale.search.objective, "surrogate_accuracy", failing_once)
        first = run_study(d, storage=JOURNAL, quiet=True)
    assert (first.started, first.n_failed, first.n_complete + first.n_pruned) == (6, 1, 5)
    failed = [t for t in load(path).trials if t.state.name == "FAIL"]
    assert failed[0].user_attrs["error"] == "RuntimeError: injected failure"
    second = run_study(d, storage=JOURNAL, quiet=True)
    assert (second.started, second.n_complete + second.n_pruned) == (1, 6)
    assert run_study(d, storage=JOURNAL, quiet=True).started == 0


def test_rerun_of_a_finished_study_adds_no_trials(surrogate_study, capsys):
    path = surrogate_study({"study.n_trials": "8"})
    assert main(["search", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "8 started now" in out and "Best feasible point" in out
    assert (path.parent / "study.db").is_file()  # the default storage, next to the study
    assert main(["search", str(path), "--quiet"]) == 0
    assert "(0 started now, 8 wanted)" in capsys.readouterr().out
    study = load(path, "sqlite:///study.db")
    assert len(study.trials) == 8
    assert study.user_attrs["study_file"] == path.read_text()
    assert study.user_attrs["effscale_version"]
    # a larger n_trials resumes: exactly the missing trials run
    assert main(["search", str(path), "--quiet", "--n-trials", "11"]) == 0
    assert "(3 started now, 11 wanted)" in capsys.readouterr().out
    assert len(load(path, "sqlite:///study.db").trials) == 11


def test_status_json_and_table(surrogate_study, capsys):
    path = surrogate_study({"study.n_trials": "12"})
    assert main(["search", str(path), "--quiet", "--storage", JOURNAL]) == 0
    capsys.readouterr()
    assert main(["status", str(path), "--storage", JOURNAL, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {"n_complete", "n_pruned", "n_failed", "best", "trials"} <= set(document)
    assert document["n_complete"] + document["n_pruned"] == 12 and document["n_failed"] == 0
    assert set(document["best"]) == {"alpha", "beta", "gamma", "value", "number"}
    best = document["trials"][document["best"]["number"]]
    assert best["values"] == [document["best"]["value"]]
    assert best["params"]["alpha"] == document["best"]["alpha"]
    assert best["user_attrs"]["gamma"] == document["best"]["gamma"]
    assert len(document["trials"]) == 12
    for trial in document["trials"]:
        assert {"number", "state", "params", "values", "user_attrs"} <= set(trial)
    assert main(["status", str(path), "--storage", JOURNAL]) == 0
    out = capsys.readouterr().out
    assert "Best feasible trial" in out and "surrogate-compound" in out


def test_status_never_creates_a_storage(surrogate_study, capsys):
    path = surrogate_study()
    assert main(["status", str(path)]) == 2
    assert "no study yet" in capsys.readouterr().err
    assert not (path.parent / "study.db").exists()


def test_a_changed_search_definition_is_not_resumed(surrogate_study):
    path = surrogate_study({"study.n_trials": "3"})
    run_study(load_study_file(path), storage=JOURNAL, quiet=True)
    changed = surrogate_study({"study.n_trials": "3", "space.alpha": "{low = 1.0, high = 1.5}"})
    with pytest.raises(ValueError, match="was made from a different search definition"):
        run_study(load_study_file(changed), storage=JOURNAL, quiet=True)


def test_two_objectives_give_a_pareto_front(surrogate_study, capsys):
    path = surrogate_study(
        {
            "study.objectives": '["ap", "macs"]',
            "study.n_trials": "24",
            "constraint.mode": '"band"',
            "space.gamma": "{low = 1.0, high = 1.6}",
        }
    )
    assert main(["search", str(path), "--quiet", "--storage", JOURNAL]) == 0
    capsys.readouterr()
    assert main(["status", str(path), "--storage", JOURNAL, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    complete = [t for t in document["trials"] if t["state"] == "COMPLETE"]
    for t in complete:
        assert t["values"][1] == t["user_attrs"]["macs"]
    front = set(document["pareto"])
    assert front
    for t in complete:  # brute force: front members are exactly the non-dominated ones
        dominated = any(
            o["values"][0] >= t["values"][0]
            and o["values"][1] <= t["values"][1]
            and o["values"] != t["values"]
            for o in complete
        )
        assert (t["number"] in front) == (not dominated)


@pytest.mark.slow
def test_four_workers_share_one_sqlite_storage_exactly(surrogate_study):
    path = surrogate_study({"study.n_trials": "40"})
    summary = run_study(load_study_file(path), workers=4, quiet=True)
    assert summary.failed_workers == () and summary.started == 40
    trials = load(path, "sqlite:///study.db").trials
    assert len(trials) == 40
    assert sorted(t.number for t in trials) == list(range(40))
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    params = {tuple(sorted(t.params.items())) for t in trials}
    assert len(params) == 40
    assert not [t for t in trials if "error" in t.user_attrs]


@pytest.mark.slow
def test_grid_with_two_workers_runs_each_point_once(surrogate_study):
    path = surrogate_study(
        {
            "study.sampler": '"grid"',
            "study.n_trials": "16",
            "space.alpha": "{low = 1.0, high = 1.3, step = 0.1}",
            "space.beta": "[1.0, 1.05, 1.1, 1.15]",
        }
    )
    summary = run_study(load_study_file(path), workers=2, storage=JOURNAL, quiet=True)
    assert summary.started == 16
    trials = load(path).trials
    points = [(t.params["alpha"], t.params["beta"]) for t in trials]
    assert len(points) == len(set(points)) == 16
    assert not [t for t in trials if "duplicate_of" in t.user_attrs]
    assert run_study(load_study_file(path), workers=2, storage=JOURNAL, quiet=True).started == 0


@pytest.mark.parametrize(
    "sampler, objectives",
    [
        ("gp", '["ap"]'),
        ("random", '["ap"]'),
        ("nsga2", '["ap", "macs"]'),
        ("tpe", '["ap", "macs"]'),
    ],
)
def test_every_sampler_runs_and_sees_the_constraint(surrogate_study, sampler, objectives):
    path = surrogate_study(
        {"study.sampler": f'"{sampler}"', "study.objectives": objectives, "study.n_trials": "14"}
    )
    summary = run_study(load_study_file(path), storage=JOURNAL, quiet=True)
    assert (summary.started, summary.n_failed) == (14, 0)
    for trial in load(path).trials:
        assert set(trial.constraints) == {"cost_ratio"}
        assert (trial.constraints["cost_ratio"] <= 0) == (trial.state.name == "COMPLETE")


def test_measured_solve_scores_the_effective_multipliers(surrogate_study):
    path = surrogate_study({"constraint.kind": '"measured"', "study.n_trials": "10"})
    d = load_study_file(path)
    run_study(d, storage=JOURNAL, quiet=True)
    trials = load(path).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert complete
    for t in complete:
        a = t.user_attrs
        assert 1.9 <= a["cost_ratio"] <= 2.1 and a["resolution"] % 8 == 0
        # the proxy is 0.6944 deep, 0.8264 wide and 384 px (D0 at phi = -2)
        expected = surrogate_accuracy(
            d.objective.surrogate,
            depth=a["depth_multiplier"] / 0.6944,
            width=a["width_multiplier"] / 0.8264,
            resolution=a["resolution"] / 384,
        )
        assert t.value == pytest.approx(expected, abs=1e-12)
    for t in trials:
        if t.state.name == "PRUNED":
            assert "measured cost ratio" in t.user_attrs["infeasible_reason"]


@pytest.mark.parametrize("runner", ["optuna", "ray"])
def test_both_runners_refuse_a_target_beyond_the_grid(runner):
    from effscale.search.runners import optuna_runner, ray_driver
    from effscale.search.runners.common import target_trials
    from effscale.search.study_file import load_study_file
    from tests.search_tests.conftest import STUDIES

    d = load_study_file(STUDIES / "efficientnet_compound.toml")  # 30 grid points
    run = optuna_runner.run_study if runner == "optuna" else ray_driver.run_study
    with pytest.raises(ValueError, match="n_trials: 31 exceeds the 30 grid points"):
        run(d, n_trials=31, quiet=True)
    with pytest.raises(ValueError, match="n_trials: must be >= 1, got 0"):
        run(d, n_trials=0, quiet=True)
    assert target_trials(d, None) == 30


def test_a_failed_grid_point_is_queued_again_only_into_a_free_slot(surrogate_study):
    """Retries of failed grid points fill free slots only: with the target about to be reached
    by the running trials, a queued retry would stay WAITING for ever (seen once with Ray)."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from effscale.search.runners.common import remaining_trials

    definition = load_study_file(
        surrogate_study(
            {
                "study.sampler": '"grid"',
                "space.alpha": "{low = 1.0, high = 1.5, step = 0.1}",
                "space.beta": "[1.0, 1.1]",
                "study.n_trials": "6",
            }
        )
    )
    study = optuna.create_study()
    dist = {"alpha": FloatDistribution(1.0, 2.0)}
    for alpha, state in [
        (1.0, TrialState.COMPLETE),
        (1.1, TrialState.COMPLETE),
        (1.2, TrialState.FAIL),
        (1.3, TrialState.FAIL),
    ]:
        study.add_trial(
            create_trial(
                params={"alpha": alpha},
                distributions=dist,
                state=state,
                value=0.5 if state == TrialState.COMPLETE else None,
            )
        )

    def waiting():
        return [
            t.system_attrs["fixed_params"]["alpha"]
            for t in study.get_trials(states=(TrialState.WAITING,))
        ]

    # target 4: two points done, one trial running elsewhere: one slot, one retry (1.2 first)
    assert remaining_trials(definition, study, 4, running=1) == 2
    assert waiting() == [1.2]
    # asked again with the same state: the queued retry holds the slot, nothing is added
    assert remaining_trials(definition, study, 4, running=1) == 2
    assert waiting() == [1.2]
    # the running trial ends the target: no slot, no retry
    fresh = optuna.create_study()
    for trial in study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL)):
        fresh.add_trial(trial)
    assert remaining_trials(definition, fresh, 3, running=1) == 1
    assert fresh.get_trials(states=(TrialState.WAITING,)) == []
    # nothing running and room for both: both failed points are queued
    assert remaining_trials(definition, fresh, 6) == 4
    assert sorted(
        t.system_attrs["fixed_params"]["alpha"]
        for t in fresh.get_trials(states=(TrialState.WAITING,))
    ) == [1.2, 1.3]
