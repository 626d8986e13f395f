"""Issue #8, points 3, 4 and 8: a trial that runs out of GPU memory, diverges or returns a
non-finite AP ends FAIL or PRUNED with its reason, never COMPLETE, and the study goes on.
All by fault injection on CPU (``torch.cuda.OutOfMemoryError`` can be made without a GPU).

    python -m pytest tests/search_tests/test_reliability_faults.py -s   # prints the figures
"""

from __future__ import annotations

import gc
import math
import weakref
from dataclasses import replace

import optuna
import pytest
import torch

import effscale.search.objective
from effscale.detector.train import DivergedError, TrainResult
from effscale.search.objective import Objective, is_out_of_memory
from effscale.search.runners.optuna_runner import run_study
from effscale.search.study_file import load_study_file
from effscale.search.trials import best_trial
from tests.search_tests.conftest import as_training, edit_study

JOURNAL = "journal:///study.journal"
TINY = {
    "base.phi_proxy": "-4",
    "base.resolution": "64",
    "base.num_classes": "6",
    "study.n_trials": "4",
    "space.beta": "{low = 1.0, high = 1.2}",
}


def training_study(surrogate_study, batch_size: int = 8):
    path = surrogate_study()
    text = as_training(
        path.read_text(),
        "generate = {train = 16, val = 8, image_size = 64}",
        f'steps = 2\nbatch_size = {batch_size}\ndevice = "cpu"',
    )
    path.write_text(edit_study(text, TINY))
    return load_study_file(path)


def _result(ap: float) -> TrainResult:
    metrics = {name: ap for name in ("ap", "ap50", "ap75", "aps", "apm", "apl")}
    return TrainResult(metrics=metrics, images_per_s=10.0, seconds=1.0, steps=2, epochs=1)


def _study(d, trainer, n_trials: int):
    objective = Objective(d, num_classes=6, data=replace(d.data, dir=d.folder), trainer=trainer)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study.optimize(objective, n_trials=n_trials, catch=(Exception,))
    return study


# ------------------------------------------------------------------------------ 3. out of memory


def test_oom_is_recognized():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert is_out_of_memory(
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
        )
    )
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an allocation failure


def test_an_oom_trial_fails_with_reason_oom_frees_its_memory_and_the_study_goes_on(
    surrogate_study, monkeypatch, capsys
):
    held: list[weakref.ref] = []
    calls: list[int] = []
    emptied: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))

    def trainer(config, *, settings, **kw):
        calls.append(settings.batch_size)
        if len(calls) <= 2:  # the first trial: OOM, and OOM again at half the batch
            activations = torch.ones(1 << 20)  # 4 MB the failed step leaves in its frame
            held.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if len(calls) == 3:  # the second trial: OOM once, then fits at half the batch
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return _result(0.2)

    d = training_study(surrogate_study, batch_size=8)
    study = _study(d, trainer, 4)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    first, second = study.trials[0], study.trials[1]
    assert first.user_attrs["fail_reason"] == "oom"
    assert first.user_attrs["oom_retry_batch_size"] == 4
    assert first.user_attrs["error"].startswith(
        "TrialOutOfMemoryError: out of memory after the retry at half the batch"
    )
    assert second.user_attrs["oom_retry_batch_size"] == 4 and "fail_reason" not in second.user_attrs
    assert calls == [8, 4, 8, 4, 8, 8]
    gc.collect()
    assert all(ref() is None for ref in held)  # the tensors of the failed steps are freed
    assert len(emptied) >= 3  # the CUDA cache was emptied after each OOM
    with capsys.disabled():
        print(
            f"\nFIGURE oom: trial 0 FAIL fail_reason=oom after a retry at batch 4; trial 1 "
            f"COMPLETE at batch {second.user_attrs['oom_retry_batch_size']}; "
            f"empty_cache calls {len(emptied)}; leaked tensors "
            f"{sum(ref() is not None for ref in held)}; study went on: {states}"
        )


def test_a_batch_that_cannot_be_halved_fails_at_once(surrogate_study):
    calls = []

    def trainer(config, *, settings, **kw):
        calls.append(settings.batch_size)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

    d = training_study(surrogate_study, batch_size=2)
    study = _study(d, trainer, 1)
    trial = study.trials[0]
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"] == "oom"
    assert "cannot be halved" in trial.user_attrs["error"] and calls == [2]


def test_an_oom_trial_in_a_real_run_is_recorded_and_the_rerun_completes(
    surrogate_study, monkeypatch
):
    d = training_study(surrogate_study)
    calls = []

    def trainer(config, **kw):
        calls.append(1)
        if len(calls) <= 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return _result(0.1)

    monkeypatch.setattr("effscale.search.objective.train_proxy", trainer)
    summary = run_study(d, storage=JOURNAL, quiet=True)
    assert (summary.n_failed, summary.n_complete + summary.n_pruned) == (1, 3)
    again = run_study(d, storage=JOURNAL, quiet=True)
    assert (again.started, again.n_complete + again.n_pruned) == (1, 4)


# ------------------------------------------------------------------------------ 4. divergence


def test_divergence_is_pruned_with_reason_never_complete(surrogate_study, capsys):
    def trainer(config, **kw):
        raise DivergedError(11, math.inf)

    d = training_study(surrogate_study)
    study = _study(d, trainer, 3)
    for trial in study.trials:
        assert trial.state.name == "PRUNED" and trial.values is None
        assert trial.user_attrs["prune_reason"] == "diverged"
        assert trial.user_attrs["diverged_step"] == 11
        assert "ap" not in trial.user_attrs
    assert best_trial(study.trials) is None
    with capsys.disabled():
        print(
            f"\nFIGURE divergence: {len(study.trials)} diverging trials -> "
            f"{[t.state.name for t in study.trials]}, prune_reason=diverged, "
            "completed with AP 0: 0"
        )


# ------------------------------------------------------------------------------ 8. non-finite


def test_optuna_itself_records_plus_inf_as_complete_and_best():
    """Why effscale checks: Optuna stores +inf as a COMPLETE value (NaN it fails)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: [0.3, math.inf, math.nan][t.number], n_trials=3)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert study.best_value == math.inf


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_a_non_finite_ap_is_never_recorded(surrogate_study, monkeypatch, bad, capsys):
    original = effscale.search.objective.surrogate_accuracy
    calls = []

    def faulty(constants, **kw):  # fault injection: the 2nd and 4th evaluations
        calls.append(1)
        return bad if len(calls) in (2, 4) else original(constants, **kw)

    monkeypatch.setattr(effscale.search.objective, "surrogate_accuracy", faulty)
    path = surrogate_study({"study.n_trials": "6"})
    for _ in range(3):  # a failed trial does not count: reruns fill the study
        summary = run_study(load_study_file(path), storage=JOURNAL, quiet=True)
    from tests.search_tests.test_runner import load

    trials = load(path).trials
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert failed and summary.n_complete + summary.n_pruned == 6
    for t in failed:
        assert t.user_attrs["fail_reason"] == "non_finite"
        assert t.user_attrs["error"].startswith("NonFiniteObjectiveError: AP is")
        assert t.values is None and "ap" not in t.user_attrs
    values = [v for t in trials if t.values for v in t.values]
    assert values and all(math.isfinite(v) for v in values)
    study = load(path)
    assert math.isfinite(study.best_value) and study.best_trial.state.name == "COMPLETE"
    if bad == math.inf:
        with capsys.disabled():
            print(
                f"\nFIGURE non-finite: {len(failed)} injected +inf APs -> FAIL "
                "(fail_reason=non_finite); non-finite values recorded: 0; best value "
                f"{study.best_value:.4f}"
            )


def test_a_non_finite_trained_ap_fails(surrogate_study):
    d = training_study(surrogate_study)
    study = _study(d, lambda config, **kw: _result(math.inf), 2)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert {t.user_attrs["fail_reason"] for t in study.trials} == {"non_finite"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_real_cuda_oom_fails_the_trial_and_releases_its_memory(surrogate_study):
    torch.cuda.empty_cache()
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()

    def trainer(config, *, settings, **kw):
        weights = torch.empty(1 << 28, device="cuda")  # 1 GiB held by the failing step
        weights.add_(1)
        total = torch.cuda.get_device_properties(0).total_memory
        torch.empty(2 * total, dtype=torch.uint8, device="cuda")  # more than the device has

    d = training_study(surrogate_study)
    study = _study(d, trainer, 1)
    trial = study.trials[0]
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"] == "oom"
    assert trial.user_attrs["oom_retry_batch_size"] == 4
    assert torch.cuda.memory_allocated() == allocated
    assert torch.cuda.memory_reserved() <= reserved + (1 << 20)  # the cache went back
