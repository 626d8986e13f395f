"""The training objective: a real tiny search on generated data, and fault injection (a trainer
that diverges, returns NaN, stalls under a pruner, or is called for infeasible points)."""

from __future__ import annotations

import math
from dataclasses import replace

import optuna
import pytest

from effscale.detector.train import DivergedError, TrainResult
from effscale.search.data import prepare_data
from effscale.search.objective import Objective
from effscale.search.runners.optuna_runner import run_study
from effscale.search.study_file import load_study_file
from tests.search_tests.conftest import as_training, edit_study

JOURNAL = "journal:///study.journal"
TINY = {
    "base.phi_proxy": "-4",
    "base.resolution": "64",
    "base.num_classes": "6",
    "study.n_trials": "2",
    "space.beta": "{low = 1.0, high = 1.2}",
}


def tiny_training_study(surrogate_study, changes: dict[str, str] | None = None):
    """D0 at phi = -4 and 64 px, trained for 2 steps of 4 images on 16 generated images."""
    path = surrogate_study()
    text = as_training(
        path.read_text(),
        "generate = {train = 16, val = 8, image_size = 64}",
        'steps = 2\nbatch_size = 4\ndevice = "cpu"',
    )
    path.write_text(edit_study(text, {**TINY, **(changes or {})}))
    return load_study_file(path)


@pytest.mark.slow
def test_a_real_tiny_search_trains_and_records_metrics(surrogate_study):
    d = tiny_training_study(
        surrogate_study,
        {"study.sampler": '"grid"', "space.alpha": "1.2", "space.beta": "[1.0, 1.1]"},
    )
    assert (d.train.steps, d.train.batch_size) == (2, 4)
    summary = run_study(d, storage=JOURNAL, quiet=True)
    assert (summary.started, summary.n_complete, summary.n_failed) == (2, 2, 0)
    cache = list((d.folder / ".effscale-cache").iterdir())
    assert len(cache) == 1 and (cache[0] / "train" / "instances.json").is_file()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(d.folder / "study.journal"))
    )
    for trial in optuna.load_study(study_name=d.study.name, storage=storage).trials:
        attrs = trial.user_attrs
        for name in ("ap", "ap50", "ap75", "aps", "apm", "apl"):
            assert attrs[name] is None or 0.0 <= attrs[name] <= 1.0
        assert attrs["ap"] is not None
        assert trial.value == attrs["ap"]
        assert attrs["images_per_s"] > 0 and attrs["train_seconds"] > 0
        assert attrs["levers"]["cuda_graph"] == "off"  # auto on CPU
        assert attrs["levers"]["data"].startswith("loader")
        assert attrs["last_epoch"] >= 1 and attrs["macs"] > 0
    assert run_study(d, storage=JOURNAL, quiet=True).started == 0


def _objective(d, trainer):
    data = replace(d.data, dir=d.folder)  # the injected trainers never read it
    return Objective(d, num_classes=6, data=data, trainer=trainer)


def _result(ap: float) -> TrainResult:
    metrics = {name: ap for name in ("ap", "ap50", "ap75", "aps", "apm", "apl")}
    return TrainResult(metrics=metrics, images_per_s=10.0, seconds=1.0, steps=2, epochs=1)


def _optimize(d, objective, n_trials, pruner=None):
    study = optuna.create_study(
        direction="maximize", pruner=pruner, sampler=optuna.samplers.TPESampler(seed=0)
    )
    study.optimize(objective, n_trials=n_trials, catch=(Exception,))
    return study


def test_divergence_prunes_the_trial_with_its_step(surrogate_study):
    def diverging(config, **kw):
        raise DivergedError(7, math.nan)

    d = tiny_training_study(surrogate_study)
    study = _optimize(d, _objective(d, diverging), 2)
    for trial in study.trials:  # issue #8: PRUNED with a reason, never COMPLETE with AP 0
        assert trial.state.name == "PRUNED" and trial.value is None
        assert trial.user_attrs["prune_reason"] == "diverged"
        assert trial.user_attrs["diverged_step"] == 7
        assert trial.user_attrs["error"].startswith("DivergedError: training diverged at step 7")


def test_a_nan_ap_is_never_complete(surrogate_study):
    d = tiny_training_study(surrogate_study)
    study = _optimize(d, _objective(d, lambda config, **kw: _result(math.nan)), 2)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert study.trials[0].user_attrs["error"].startswith("NonFiniteObjectiveError: AP is nan")


def test_a_stalling_trial_is_pruned_from_its_epoch_reports(surrogate_study):
    def stalling(config, *, on_epoch, **kw):
        trial_number = len(calls)
        calls.append(trial_number)
        for epoch in range(1, 6):  # the first three trials improve; later ones stall at 0.01
            ap = 0.05 * epoch if trial_number < 3 else 0.01
            on_epoch(epoch, {"ap": ap})
        return _result(ap)

    calls: list[int] = []
    d = tiny_training_study(surrogate_study)
    study = _optimize(
        d, _objective(d, stalling), 5, pruner=optuna.pruners.MedianPruner(n_startup_trials=3)
    )
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3 + ["PRUNED"] * 2
    assert study.trials[3].user_attrs["pruned_at_epoch"] == 1
    assert study.trials[3].intermediate_values == {1: 0.01}


def test_infeasible_points_never_reach_the_trainer(surrogate_study):
    trained = []

    def counting(config, **kw):
        trained.append(config.image_size)
        return _result(0.1)

    d = tiny_training_study(
        surrogate_study, {"constraint.mode": '"band"', "space.gamma": "{low = 1.0, high = 1.6}"}
    )
    study = _optimize(d, _objective(d, counting), 20)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned and len(trained) == len(complete)
    assert all(
        t.constraints["cost_ratio"] > 0 and "infeasible_reason" in t.user_attrs for t in pruned
    )


def test_num_classes_must_match_the_data(surrogate_study):
    d = tiny_training_study(surrogate_study, {"base.num_classes": "90"})
    with pytest.raises(
        ValueError,
        match="base.num_classes: 90, but the data has 6 classes; drop num_classes or set it to 6",
    ):
        run_study(d, storage=JOURNAL, quiet=True)
    assert not (d.folder / "study.journal").exists()


def test_data_is_generated_once_next_to_the_study(surrogate_study):
    d = tiny_training_study(surrogate_study)
    data, classes = prepare_data(d)
    assert classes == 6 and data.dir.parent == d.folder / ".effscale-cache"
    stamp = (data.dir / "train" / "instances.json").stat().st_mtime_ns
    again, _ = prepare_data(d)
    assert again.dir == data.dir
    assert (data.dir / "train" / "instances.json").stat().st_mtime_ns == stamp
