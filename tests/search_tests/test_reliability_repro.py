"""Issue #8, point 7: the same study file and seed on CPU, with one worker, give the same sampled
params in the same order, whatever fresh storage holds the study; a resumed run draws new
points instead of repeating the first run's.

    python -m pytest tests/search_tests/test_reliability_repro.py -s   # prints the figure
"""

from __future__ import annotations

import pytest

from effscale.search.runners.optuna_runner import run_study
from effscale.search.study_file import load_study_file
from tests.search_tests.test_runner import load


def _sequence(path, storage):
    return [
        (t.number, t.state.name, t.params, t.user_attrs.get("gamma"), t.values)
        for t in load(path, storage).trials
    ]


@pytest.mark.parametrize(
    "sampler, storages",
    [
        ("tpe", ("sqlite:///first.db", "journal:///second.journal")),
        ("random", ("journal:///first.journal", "journal:///second.journal")),
        ("gp", ("journal:///first.journal", "journal:///second.journal")),
    ],
)
def test_same_file_and_seed_give_the_same_params_in_the_same_order(
    surrogate_study, sampler, storages, capsys
):
    changes = {"study.sampler": f'"{sampler}"', "study.n_trials": "12", "study.seed": "7"}
    first = surrogate_study(changes, name="first.toml")
    second = surrogate_study(changes, name="second.toml")
    run_study(load_study_file(first), storage=storages[0], quiet=True)
    run_study(load_study_file(second), storage=storages[1], quiet=True)
    a = _sequence(first, storages[0])
    b = _sequence(second, storages[1])
    assert len(a) == 12 and a == b
    other = surrogate_study({**changes, "study.seed": "8"}, name="other.toml")
    run_study(load_study_file(other), storage="journal:///other.journal", quiet=True)
    assert [t[2] for t in _sequence(other, "journal:///other.journal")] != [t[2] for t in a]
    with capsys.disabled():
        print(
            f"\nFIGURE reproducibility ({sampler}, seed 7, 1 worker): 12/12 params "
            f"identical in order on {storages[0].split(':')[0]} and "
            f"{storages[1].split(':')[0]}; seed 8 differs"
        )


def test_a_resumed_run_does_not_repeat_the_first_runs_points(surrogate_study):
    path = surrogate_study({"study.n_trials": "4", "study.sampler": '"random"'})
    run_study(load_study_file(path), storage="journal:///s.journal", quiet=True)
    run_study(load_study_file(path), storage="journal:///s.journal", quiet=True, n_trials=8)
    params = [tuple(sorted(t.params.items())) for t in load(path, "journal:///s.journal").trials]
    assert len(params) == 8 and len(set(params)) == 8
