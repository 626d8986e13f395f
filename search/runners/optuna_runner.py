"""Run a study with Optuna: K worker processes sharing one storage, each pinned to a GPU slot.

Counting. ``n_trials`` is the number of *finished* (COMPLETE or PRUNED) trials the study should
hold. A run adds only ``n_trials − already finished`` trials, so rerunning a finished study adds
none, and a run interrupted or with failed trials is completed by the next one. Within a run the
workers draw tickets from one shared counter before each trial, so exactly the missing number of
trials is started however fast they finish; ``MaxTrialsCallback`` also stops workers when other
processes on the same storage have filled the study.

Grid. Every worker's ``GridSampler`` gets the same seed, so trial ``i`` takes grid point ``i``
(Optuna 5.0) and no point is sampled twice in the first pass. A rerun enqueues the points whose
trials failed, and the objective skips (prunes) a point that another trial already holds.

Workers. One worker runs in this process. More are ``multiprocessing`` spawn processes; with
GPUs, slot ``k`` of ``gpus × trials_per_gpu`` sees only its GPU (``CUDA_VISIBLE_DEVICES``);
on CPU, K training workers get ``cores // K`` torch threads each. ``trials_per_gpu = "auto"``
(the default) is chosen by :func:`effscale.search.packing.resolve_packing` from the GPU memory, the CPU
cores and the largest trial; the run prints its reason and stores it in the study's ``packing``
user attr (a hand-given value is stored there too).
A trial that raises is recorded FAIL with its ``error`` user attr and the study goes on.

Dead workers. Each trial records its worker (:data:`effscale.search.storage.liveness.WORKER_ATTR`); journal
storages get effscale's heartbeat thread, RDB storages Optuna's heartbeat when trials train (or
when ``EFFSCALE_HEARTBEAT_INTERVAL`` is set). Before a run, between trials (at most once per
heartbeat interval) and after the workers exit, :func:`effscale.search.storage.liveness.sweep_stale_trials` fails
the trials of dead workers (``fail_reason = "worker_lost"``) and enqueues each once more with the
same params (``retry_of``); a sweep inside a run hands the ticket back, so the retry runs in the
same run. Interval and grace period: ``heartbeat_interval``/``grace_period`` arguments, else
``EFFSCALE_HEARTBEAT_INTERVAL``/``EFFSCALE_GRACE_PERIOD``, else 60 s / 180 s.

Nothing touches the storage until the study file, the options, the data and the GPUs have been
checked.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from ..data import prepare_data
from ..definition import DataSection, StudyDefinition
from ..errors import ParameterError
from ..objective import Objective, train_inputs
from ..packing import AUTO, check_trials_per_gpu, decide_packing
from ..storage import (
    WORKER_ATTR,
    HeartbeatSettings,
    StorageLocation,
    TrialHeartbeat,
    check_workers,
    heartbeat_forced,
    heartbeat_settings,
    open_storage,
    resolve_storage_url,
    sweep_stale_trials,
    worker_identity,
)
from .common import (
    RunSummary,
    TrialProgress,
    make_pruner,
    make_sampler,
    open_study,
    remaining_trials,
    summarize_run,
    target_trials,
)

__all__ = ["run_study"]

_POLL_S = 1.0

#: what makes a trial's objective: :class:`~..objective.Objective` or a subclass of it
ObjectiveFactory = Callable[..., Objective]


# -------------------------------------------------------------------------------------- workers


class _Tickets:
    """A counter shared by the workers: one ticket per trial to start."""

    def __init__(self, count: int, context: Any) -> None:
        self.value = context.Value("i", count)
        self.retries = context.Value("i", 0)

    def take(self) -> bool:
        with self.value.get_lock():
            if self.value.value <= 0:
                return False
            self.value.value -= 1
            return True

    def count_retries(self, seen: int) -> None:
        """``seen`` retries were enqueued during this run (by any worker, by effscale's sweep or
        Optuna's heartbeat callback): hand back one ticket for each not counted yet, since each
        replaces a trial that took a ticket and died."""
        with self.retries.get_lock():
            new = seen - self.retries.value
            if new <= 0:
                return
            self.retries.value = seen
        with self.value.get_lock():
            self.value.value += new


class _TicketCallback:
    def __init__(self, tickets: _Tickets) -> None:
        self.tickets = tickets

    def __call__(self, study: Any, trial: Any) -> None:
        if not self.tickets.take():
            study.stop()


@dataclass(frozen=True)
class _WorkerJob:
    definition: StudyDefinition
    location: StorageLocation
    study_name: str
    index: int
    gpu: int | None
    pin_gpu: bool
    data: DataSection | None
    num_classes: int
    target: int
    threads: int | None = None
    heartbeat: HeartbeatSettings = HeartbeatSettings()
    rdb_heartbeat: bool = False
    resumed_at: int = 0
    objective: ObjectiveFactory = Objective


class _GuardedObjective:
    """The objective, with the worker's identity written to each trial first and, on journal
    storages, a heartbeat thread while it runs (see :mod:`..storage.liveness`)."""

    def __init__(
        self,
        objective: Objective,
        *,
        journal: bool,
        heartbeat: HeartbeatSettings,
        rdb_heartbeat: bool,
    ) -> None:
        self.objective = objective
        self.journal_interval = heartbeat.interval if journal else None
        recorded = heartbeat.interval if (journal or rdb_heartbeat) else None
        self.identity = worker_identity(recorded)

    def __call__(self, trial: Any) -> Any:
        trial.storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, self.identity)
        if self.journal_interval is None:
            return self.objective(trial)
        with TrialHeartbeat(trial.storage, trial._trial_id, self.journal_interval):
            return self.objective(trial)


class _SweepCallback:
    """Between trials, at most once per heartbeat interval: fail and retry the trials of dead
    workers, and hand a ticket back for each retry enqueued during this run (trial numbers from
    ``first_number`` on), so that the retries run in this run."""

    def __init__(self, tickets: _Tickets, heartbeat: HeartbeatSettings, first_number: int) -> None:
        self.tickets = tickets
        self.heartbeat = heartbeat
        self.first_number = first_number
        self._next = time.monotonic() + heartbeat.interval

    def __call__(self, study: Any, trial: Any) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.heartbeat.interval
        sweep_stale_trials(study, self.heartbeat)
        self.tickets.count_retries(
            sum(
                1
                for t in study.get_trials(deepcopy=False)
                if t.number >= self.first_number and t.user_attrs.get("retry_of") is not None
            )
        )


def _device(job: _WorkerJob) -> str:
    if job.definition.objective.kind != "train":
        return "cpu"
    if job.gpu is not None:
        return "cuda" if job.pin_gpu else f"cuda:{job.gpu}"
    device = job.definition.train.device
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _work(
    job: _WorkerJob, tickets: _Tickets, on_trial: Callable[[Any, Any], None] | None = None
) -> None:
    """One worker: load the study, then run trials while tickets last."""
    if job.gpu is not None and job.pin_gpu:  # before CUDA is initialized in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(job.gpu)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    d = job.definition
    training = d.objective.kind == "train"
    if training and job.threads is not None:  # CPU workers share the cores instead of fighting
        torch.set_num_threads(job.threads)
    storage = open_storage(job.location, heartbeat=job.heartbeat if job.rdb_heartbeat else False)
    study = optuna.load_study(
        study_name=job.study_name,
        storage=storage,
        sampler=make_sampler(d, worker=job.index, resumed_at=job.resumed_at),
        pruner=make_pruner(d),
    )
    objective = _GuardedObjective(
        job.objective(
            d,
            num_classes=job.num_classes,
            data=job.data,
            device=_device(job),
            gpu=job.gpu,
            quiet=True,
        ),  # one progress line: the search's
        journal=job.location.kind == "journal",
        heartbeat=job.heartbeat,
        rdb_heartbeat=job.rdb_heartbeat,
    )
    callbacks: list[Callable[[Any, Any], None]] = []
    if d.study.sampler != "grid":
        callbacks.append(
            optuna.study.MaxTrialsCallback(
                job.target, states=(TrialState.COMPLETE, TrialState.PRUNED)
            )
        )
    callbacks.append(_SweepCallback(tickets, job.heartbeat, job.resumed_at))
    callbacks.append(_TicketCallback(tickets))
    if on_trial is not None:
        callbacks.append(on_trial)
    if not tickets.take():
        return
    study.optimize(objective, catch=(Exception,), callbacks=callbacks, gc_after_trial=training)


# ------------------------------------------------------------------------------------ the run


def _slots(workers: int | None, gpus: Sequence[int], trials_per_gpu: int) -> list[int | None]:
    if not gpus:
        return [None] * (workers or 1)
    slots: list[int | None] = [gpu for gpu in gpus for _ in range(trials_per_gpu)]
    if workers is not None and workers != len(slots):
        raise ParameterError(
            "workers",
            f"{len(gpus)} GPU(s) × {trials_per_gpu} trial(s) per GPU make {len(slots)} slots, "
            f"got {workers}",
            f"leave workers unset or set it to {len(slots)}",
        )
    return slots


def _check_gpus(gpus: Sequence[int]) -> None:
    count = torch.cuda.device_count()
    missing = [g for g in gpus if g >= count]
    if missing:
        raise ParameterError(
            "gpus",
            f"GPU {missing[0]} is not visible (this machine has {count} CUDA device(s))",
            "list indices below that",
        )


def run_study(
    definition: StudyDefinition,
    *,
    n_trials: int | None = None,
    workers: int | None = None,
    gpus: Sequence[int] | None = None,
    trials_per_gpu: int | None = None,
    storage: str | None = None,
    quiet: bool = False,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    cpu_count: int | None = None,
    objective: ObjectiveFactory = Objective,
) -> RunSummary:
    """Run (or resume) the study with Optuna until it holds ``n_trials`` finished trials.

    ``None`` options take the study file's value (``[study] n_trials``, ``[execution] workers``,
    ``gpus``, ``trials_per_gpu``, ``[study] storage``). With ``gpus``, the workers are the GPU
    slots (``len(gpus) × trials_per_gpu``); ``trials_per_gpu = "auto"`` is chosen by
    :func:`..packing.resolve_packing` (``cpu_count``: the cores it may count, default this
    process's), whose reason is printed unless ``quiet``, which also turns the progress display
    off.
    ``heartbeat_interval`` and ``grace_period`` (seconds) override ``EFFSCALE_HEARTBEAT_INTERVAL``
    and ``EFFSCALE_GRACE_PERIOD`` (default 60 / 180); giving either turns Optuna's heartbeat on
    for RDB storages even for surrogate trials. ``objective`` makes each worker's objective:
    :class:`~..objective.Objective` or a subclass (for fault injection; it must pickle by
    reference when workers are processes).
    """
    d = definition
    ex = d.execution
    target = target_trials(d, n_trials)
    gpu_list = tuple(ex.gpus if gpus is None else gpus)
    per_gpu = check_trials_per_gpu(ex.trials_per_gpu if trials_per_gpu is None else trials_per_gpu)
    if workers is not None and workers < 1:
        raise ParameterError("workers", f"must be >= 1, got {workers}", "give 1 or more")
    wanted = workers if workers is not None else (None if gpu_list else ex.workers)
    location = resolve_storage_url(storage or d.storage_url, base_dir=d.folder)
    slots: list[int | None] | None = None
    if not gpu_list or per_gpu != AUTO:  # known now: check before the data is prepared
        slots = _slots(wanted, gpu_list, 1 if per_gpu == AUTO else int(per_gpu))
        check_workers(location, len(slots))
    beat = heartbeat_settings(heartbeat_interval, grace_period)
    rdb_heartbeat = location.kind != "journal" and (
        d.objective.kind == "train"
        or heartbeat_forced()
        or heartbeat_interval is not None
        or grace_period is not None
    )
    data, num_classes = prepare_data(d)
    if d.objective.kind == "train":
        assert data is not None  # a training study has data (study_file checks it)
        train_inputs(d, data)  # the training settings are valid before the storage is touched
        if gpu_list:
            _check_gpus(gpu_list)
    packing = None
    if gpu_list:
        chosen, packing = decide_packing(
            d,
            gpus=gpu_list,
            trials_per_gpu=per_gpu,
            num_classes=num_classes,
            storage=location,
            cpu_count=cpu_count,
            quiet=quiet,
        )
        if slots is None:  # auto: known only now
            slots = _slots(wanted, gpu_list, chosen)
            check_workers(location, len(slots))
    assert slots is not None

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(
        d, location, open_storage(location, heartbeat=beat if rdb_heartbeat else False)
    )
    sweep_stale_trials(study, beat)  # trials of workers killed in an earlier run
    remaining = remaining_trials(d, study, target)
    if remaining <= 0:
        return summarize_run(d, location, study, target, 0, (), packing)
    if packing is not None:
        study.set_user_attr("packing", packing)
    trials_before = study.get_trials(deepcopy=False)
    before = len(trials_before)
    waiting = {t.number for t in trials_before if t.state.name == "WAITING"}  # retries, grid

    context = multiprocessing.get_context("spawn")
    tickets = _Tickets(remaining, context)
    threads = (
        max(1, (os.cpu_count() or 1) // len(slots)) if len(slots) > 1 and not gpu_list else None
    )
    jobs = [
        _WorkerJob(
            definition=d,
            location=location,
            study_name=d.study.name,
            index=i,
            gpu=gpu,
            pin_gpu=len(slots) > 1,
            data=data,
            num_classes=num_classes,
            target=target,
            threads=threads,
            heartbeat=beat,
            rdb_heartbeat=rdb_heartbeat,
            resumed_at=before,
            objective=objective,
        )
        for i, gpu in enumerate(slots)
    ]
    failed: list[int] = []
    with TrialProgress(target=target, quiet=quiet) as progress:
        progress.update(study.get_trials(deepcopy=False))
        if len(jobs) == 1:
            _work(
                jobs[0],
                tickets,
                on_trial=None
                if quiet
                else lambda s, _t: progress.update(s.get_trials(deepcopy=False)),
            )
        else:
            processes = [
                context.Process(
                    target=_work, args=(job, tickets), name=f"effscale-worker-{job.index}"
                )
                for job in jobs
            ]
            for process in processes:
                process.start()
            while any(p.is_alive() for p in processes):
                time.sleep(_POLL_S)
                progress.update(study.get_trials(deepcopy=False))
            for process in processes:
                process.join()
            failed = [p.exitcode for p in processes if p.exitcode]
            if failed:  # fail the trials of the dead workers now; the rerun runs their retries
                sweep_stale_trials(study, beat)
        progress.update(study.get_trials(deepcopy=False))
    trials_after = study.get_trials(deepcopy=False)
    started = (
        len(trials_after)
        - before
        + sum(1 for t in trials_after if t.number in waiting and t.state.name != "WAITING")
    )
    return summarize_run(d, location, study, target, started, tuple(failed), packing)
