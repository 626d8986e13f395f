"""The side of the Ray backend that Ray ships to its workers: the trainable that runs the study's
objective on the Optuna trial the driver asked for (:mod:`.ray_driver`).

The trainable opens the study's storage, builds ``optuna.Trial(study, trial_id)`` and calls the
objective on it, which re-reads the sampled parameters and records the user attrs and the
``cost_ratio`` constraint itself, then ``study.tell``\\s the result. Per-epoch AP goes to Optuna and
to Tune (whose scheduler decides on stopping); a failed attempt's ``error`` waits in the system
attr :data:`FAILURE_ATTR` until the trial has failed for good.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune

from ..definition import DataSection, StudyDefinition
from ..objective import Objective
from ..storage import WORKER_ATTR, StorageLocation, open_storage, worker_identity

__all__ = [
    "EXPERIMENT_ATTR",
    "TUNE_TRIAL_ATTR",
    "ATTEMPTS_ATTR",
    "FAILURE_ATTR",
    "NODE_ATTR",
    "TRIAL_KEY",
    "NUMBER_KEY",
    "FEASIBLE_KEY",
    "METRIC",
    "ObjectiveFactory",
    "RayJob",
    "record_worker",
    "final_metrics",
    "trainable",
]

#: system attrs written by the Ray backend (user attrs stay those of the Optuna backend)
EXPERIMENT_ATTR = "effscale:ray_experiment"
TUNE_TRIAL_ATTR = "effscale:ray_trial_id"
ATTEMPTS_ATTR = "effscale:ray_attempts"
FAILURE_ATTR = "effscale:ray_failure"
#: the one user attr the Ray backend adds: the node that ran the trial
NODE_ATTR = "ray_node_id"

#: keys of a Tune trial's config: the Optuna trial it runs, and whether the point is feasible
TRIAL_KEY = "optuna_trial_id"
NUMBER_KEY = "optuna_trial_number"
FEASIBLE_KEY = "_effscale_feasible"
#: the metric reported to Tune
METRIC = "ap"
#: the user attrs a failed attempt keeps aside until the trial has failed for good
_FAILURE_KEYS = ("error", "fail_reason", "diverged_step")

#: what makes a trial's objective: :class:`~..objective.Objective` or a subclass of it
ObjectiveFactory = Callable[..., Objective]


def record_worker(storage: Any, trial_id: int) -> None:
    """Record this process as the trial's worker, as the Optuna backend does, so that the sweep
    of dead workers' trials judges a Ray trial by the process that runs it."""
    storage.set_trial_system_attr(trial_id, WORKER_ATTR, worker_identity())


@dataclass(frozen=True)
class RayJob:
    """What a trainable needs (shipped once through the object store): the study, its storage,
    the classes and prepared data of its detectors, whether trials use a GPU, the torch threads
    of a CPU trial and the objective's factory (:class:`~..objective.Objective`, or a subclass
    that injects faults)."""

    definition: StudyDefinition
    location: StorageLocation
    num_classes: int
    data: DataSection | None
    use_gpu: bool
    threads: int | None
    objective: ObjectiveFactory = Objective


_WORKER_CACHE: dict[Any, Any] = {}


class _RayTrial:
    """The ``optuna.Trial`` given to the objective on Ray: per-epoch AP also goes to Tune,
    pruning is Tune's, and a failed attempt's ``error`` waits in :attr:`failure`."""

    def __init__(self, trial: optuna.Trial) -> None:
        self._trial = trial
        self.failure: dict[str, Any] = {}

    def keep(self) -> None:
        """The attempt did not fail (e.g. pruned as diverged): record what it kept aside."""
        for key, value in self.failure.items():
            self._trial.set_user_attr(key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def set_user_attr(self, key: str, value: Any) -> None:
        if key in _FAILURE_KEYS:
            self.failure[key] = value
        else:
            self._trial.set_user_attr(key, value)

    def report(self, value: float, step: int) -> None:
        self._trial.report(value, step)
        tune.report({METRIC: float(value), "epoch": int(step)})

    def should_prune(self) -> bool:
        return False


def _worker_study(job: RayJob) -> optuna.Study:
    key = ("study", job.location.url, job.definition.study.name)
    if key not in _WORKER_CACHE:  # the driver sampled the point: a cheap sampler suffices here
        _WORKER_CACHE[key] = optuna.load_study(
            study_name=job.definition.study.name,
            storage=open_storage(job.location),
            sampler=optuna.samplers.RandomSampler(),
            pruner=optuna.pruners.NopPruner(),
        )
    study: optuna.Study = _WORKER_CACHE[key]
    return study


def _worker_objective(job: RayJob, gpu: int | None) -> Objective:
    key = (
        "objective",
        job.definition.fingerprint(),
        job.definition.path,
        gpu,
        job.use_gpu,
        job.objective,
    )
    if key not in _WORKER_CACHE:
        device = "cuda" if job.use_gpu else "cpu"
        _WORKER_CACHE[key] = job.objective(
            job.definition,
            num_classes=job.num_classes,
            data=job.data,
            device=device,
            gpu=gpu,
            quiet=True,
        )
    objective: Objective = _WORKER_CACHE[key]
    return objective


def _gpu_id() -> int | None:
    ids = ray.get_gpu_ids()
    if not ids:
        return None
    try:
        return int(ids[0])
    except (TypeError, ValueError):
        return None


def final_metrics(values: Sequence[float], epoch: Any) -> dict[str, Any]:
    """What a finished trial reports to Tune: its AP (``METRIC``), MACs with two objectives, and
    the last epoch."""
    metrics: dict[str, Any] = {METRIC: float(values[0])}
    if len(values) > 1:
        metrics["macs"] = float(values[1])
    if epoch is not None:
        metrics["epoch"] = int(epoch)
    return metrics


def trainable(config: dict[str, Any], job: RayJob) -> None:
    """One Tune trial: run the study's objective on the Optuna trial the driver asked for."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ident = int(config[TRIAL_KEY])
    study = _worker_study(job)
    storage = study._storage
    frozen = storage.get_trial(ident)
    if frozen.state.is_finished():  # told before a restart: nothing left to run
        if frozen.state == TrialState.COMPLETE:
            tune.report(final_metrics(frozen.values, frozen.user_attrs.get("last_epoch")))
        return
    attempt = int(frozen.system_attrs.get(ATTEMPTS_ATTR, 0)) + 1
    storage.set_trial_system_attr(ident, ATTEMPTS_ATTR, attempt)
    record_worker(storage, ident)
    storage.set_trial_user_attr(ident, NODE_ATTR, ray.get_runtime_context().get_node_id())
    if job.threads is not None and job.definition.objective.kind == "train":
        torch.set_num_threads(job.threads)
    trial = _RayTrial(optuna.Trial(study, ident))
    try:
        value = _worker_objective(job, _gpu_id())(trial)  # type: ignore[arg-type]
    except optuna.TrialPruned:  # a grid point that another trial holds, a diverged training
        trial.keep()
        study.tell(frozen.number, state=TrialState.PRUNED, skip_if_finished=True)
        return
    except Exception as exc:
        failure = dict(trial.failure)
        failure.setdefault("error", f"{type(exc).__name__}: {' '.join(str(exc).split())}")
        storage.set_trial_system_attr(ident, FAILURE_ATTR, failure)
        raise
    trial.keep()
    told = study.tell(frozen.number, value, skip_if_finished=True)
    if told.state == TrialState.COMPLETE:
        tune.report(final_metrics(told.values, told.user_attrs.get("last_epoch")))
