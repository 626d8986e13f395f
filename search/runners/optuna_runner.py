"""Run a study with Optuna: K worker processes sharing one storage, each pinned to a GPU slot.

Counting. ``n_trials`` is the number of *finished* (COMPLETE or PRUNED) trials the study should
hold. A run adds only ``n_trials − already finished`` trials, so rerunning a finished study adds
none, and a run interrupted or with failed trials is completed by the next one. Within a run the
workers draw tickets from one shared counter before each trial, so a run never starts more than
the missing number of trials (a set-up where every trial fails cannot loop). Across processes,
a worker starts a trial only under the study's :class:`~..storage.TrialGate` (a lock next to
the storage file, or an advisory lock on the server), and only while the finished and running
trials (:func:`.common.active_trials`) are fewer than ``n_trials``: two ``effscale search``
processes on one study stop at exactly ``n_trials``, counting the trials still running.

One study, many processes. Each run registers a token in the study
(:func:`~..storage.register_run`); a run that finds another one alive mixes its token into its
sampler seeds (:func:`.common.make_sampler`), so that concurrent processes draw different
points. A run alone keeps the reproducible seeds.

Stopping. SIGINT (Ctrl-C) and SIGTERM stop the run (:mod:`.stopping`): the running trials are
told FAIL with ``fail_reason = "interrupted"``, the parent forwards SIGTERM to its workers and
waits :data:`STOP_GRACE_S` seconds for them (then kills them and records their trials itself),
and the run ends with :class:`~..errors.RunStopped` (one line, exit ``128 + signal``). Workers
also get SIGTERM when their parent dies. A full disk fails the trial with ``fail_reason =
"disk_full"`` (when the storage still takes the write) and stops the run the same way (exit 1);
nothing already stored is rewritten. A rerun resumes.

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

import gc
import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.exceptions import ExperimentalWarning
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.study._tell import _tell_with_warning
from optuna.trial import TrialState

from ..data import prepare_data
from ..definition import DataSection, StudyDefinition
from ..errors import ParameterError, RunStopped
from ..objective import Objective, train_inputs
from ..output import shell_path
from ..packing import AUTO, check_trials_per_gpu, decide_packing
from ..storage import (
    WORKER_ATTR,
    HeartbeatSettings,
    StorageLocation,
    TrialGate,
    TrialHeartbeat,
    check_workers,
    finish_run,
    heartbeat_forced,
    heartbeat_settings,
    open_storage,
    register_run,
    resolve_storage_url,
    sweep_stale_trials,
    worker_identity,
)
from .common import (
    RunSummary,
    TrialProgress,
    active_trials,
    make_pruner,
    make_sampler,
    open_study,
    remaining_trials,
    summarize_run,
    target_trials,
)
from .stopping import (
    DISK_FULL,
    EXIT_DISK_FULL,
    EXIT_INTERRUPTED,
    INTERRUPTED,
    DeferringTrial,
    DiskFullError,
    StopSignals,
    TrialInterrupted,
    die_with_parent,
    disk_full_reason,
    ignore_sigint,
    is_disk_full,
    signal_name,
)

__all__ = ["run_study", "STOP_GRACE_S"]

_POLL_S = 1.0
#: the most worker processes one run starts
MAX_WORKERS = 1024
#: seconds the parent waits for its workers to record their interrupted trials before it kills
#: them (and records those trials itself)
STOP_GRACE_S = 10.0

#: what makes a trial's objective: :class:`~..objective.Objective` or a subclass of it
ObjectiveFactory = Callable[..., Objective]


# -------------------------------------------------------------------------------------- workers


class _Tickets:
    """A counter shared by the workers: one ticket per trial to start; ``started`` counts the
    trials this run started."""

    def __init__(self, count: int, context: Any) -> None:
        self.value = context.Value("q", count)
        self.retries = context.Value("q", 0)
        self.started = context.Value("q", 0)

    def take(self) -> bool:
        with self.value.get_lock():
            if self.value.value <= 0:
                return False
            self.value.value -= 1
            return True

    def count_started(self) -> None:
        """One more trial started in this run."""
        with self.started.get_lock():
            self.started.value += 1

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
    salt: int | None = None
    parent_pid: int = 0


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


def _record_failure(study: Any, trial: Any, reason: str, error: str) -> bool:
    """Tell ``trial`` FAIL with ``fail_reason`` and ``error``; whether the storage took it
    (a full disk may refuse the write: the trial is then left RUNNING for the next run's sweep
    of dead workers)."""
    try:
        study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        study._storage.set_trial_user_attr(trial._trial_id, "error", error)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    except Exception:  # the storage is full or gone: nothing more can be recorded
        return False
    return True


def _disk_full(study: Any, trial: Any, exc: BaseException) -> DiskFullError:
    """Record a disk-full failure of ``trial`` (``None``: before a trial was created) as far as
    the storage allows, and return the error that stops the run."""
    message = disk_full_reason(exc)
    recorded = trial is not None and _record_failure(
        study, trial, DISK_FULL, f"disk full: {message}"
    )
    return DiskFullError(message, number=None if trial is None else trial.number, recorded=recorded)


def _start_trial(
    study: Any,
    job: _WorkerJob,
    tickets: _Tickets,
    gate: TrialGate,
    signals: StopSignals,
) -> Any:
    """The next trial, or ``None`` when the run should stop: a signal, no ticket left, or the
    study full (finished and running trials of every process reaching the target, after the
    trials of dead workers are swept). Counting and creating happen under ``gate``."""
    with gate:
        if signals.requested:
            return None
        full = active_trials(job.definition, study.get_trials(deepcopy=False)) >= job.target
        if full and sweep_stale_trials(study, job.heartbeat):
            tickets.count_retries(_retries_since(study, job.resumed_at))
            full = active_trials(job.definition, study.get_trials(deepcopy=False)) >= job.target
        if full or not tickets.take():
            return None
        trial = study.ask()
        tickets.count_started()
        return trial


def _retries_since(study: Any, first_number: int) -> int:
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.number >= first_number and t.user_attrs.get("retry_of") is not None
    )


def _run_trial(study: Any, trial: Any, objective: Any, signals: StopSignals) -> None:
    """Evaluate ``trial`` and tell the storage how it ended, as ``study.optimize`` would (any
    ``Exception`` of the objective is a FAIL), except that a signal tells it FAIL with
    ``fail_reason = "interrupted"`` and re-raises :class:`.TrialInterrupted`, and a full disk
    raises :class:`.DiskFullError`."""
    value: Any = None
    state: TrialState | None = None
    failure: BaseException | None = None
    try:
        with get_heartbeat_thread(trial._trial_id, study._storage):
            with signals.interruptible():
                value = objective(DeferringTrial(trial, signals))
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except TrialInterrupted as exc:
        _record_failure(study, trial, INTERRUPTED, f"interrupted by {signal_name(exc.signum)}")
        raise
    except Exception as exc:
        state, failure = TrialState.FAIL, exc
    if failure is not None and is_disk_full(failure):
        raise _disk_full(study, trial, failure) from None
    try:
        _tell_with_warning(
            study=study, trial=trial, value_or_values=value, state=state, suppress_warning=True
        )
    except Exception as exc:
        if is_disk_full(exc):
            raise _disk_full(study, trial, exc) from None
        raise


def _trial_loop(
    job: _WorkerJob,
    study: Any,
    objective: Any,
    tickets: _Tickets,
    signals: StopSignals,
    on_trial: Callable[[Any, Any], None] | None = None,
) -> None:
    """Run trials until the run should stop (:func:`_start_trial`)."""
    gate = TrialGate(job.location, job.study_name)
    sweep = _SweepCallback(tickets, job.heartbeat, job.resumed_at)
    training = job.definition.objective.kind == "train"
    study._stop_flag = False
    study._thread_local.in_optimize_loop = True  # samplers may call study.stop() (the grid)
    try:
        while not signals.requested and not study._stop_flag:
            if is_heartbeat_enabled(study._storage):  # as study.optimize does, for RDB storages
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
            try:
                trial = _start_trial(study, job, tickets, gate, signals)
            except Exception as exc:
                if is_disk_full(exc):
                    raise _disk_full(study, None, exc) from None
                raise
            if trial is None:
                break
            try:
                _run_trial(study, trial, objective, signals)
            finally:
                if training:
                    gc.collect()
            frozen = study._storage.get_trial(trial._trial_id)
            sweep(study, frozen)
            if on_trial is not None:
                on_trial(study, frozen)
    finally:
        study._thread_local.in_optimize_loop = False
        gate.close()
        study._storage.remove_session()


def _work(
    job: _WorkerJob,
    tickets: _Tickets,
    on_trial: Callable[[Any, Any], None] | None = None,
    signals: StopSignals | None = None,
) -> None:
    """One worker: load the study, then run trials while tickets last and the study has room.

    In a worker process (``signals`` not given), SIGINT and SIGTERM stop it after the running
    trial is recorded FAIL ``"interrupted"`` (exit code :data:`.EXIT_INTERRUPTED`), a full disk
    stops it with :data:`.EXIT_DISK_FULL`, and it dies with its parent. In the parent
    (``signals`` given) :class:`.TrialInterrupted` and :class:`.DiskFullError` propagate."""
    if signals is None:
        die_with_parent(job.parent_pid)
        code = 0
        with StopSignals() as own:
            try:
                _work(job, tickets, on_trial, own)
            except TrialInterrupted:
                code = EXIT_INTERRUPTED
            except DiskFullError:
                code = EXIT_DISK_FULL
            if own.requested:
                code = code or EXIT_INTERRUPTED
        if code:
            # Everything is recorded (committed or fsynced). Skip the interpreter's teardown
            # of torch and timm, which takes seconds on a busy machine: the parent waits.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return
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
        sampler=make_sampler(d, worker=job.index, resumed_at=job.resumed_at, salt=job.salt),
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
    _trial_loop(job, study, objective, tickets, signals, on_trial)


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
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise ParameterError(
            "workers",
            f"must be in [1, {MAX_WORKERS}] worker processes, got {workers:,}",
            f"give 1 to {MAX_WORKERS}, or use the Ray backend across machines",
        )
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
    before = len(study.get_trials(deepcopy=False))
    token = register_run(study)  # concurrent runs on this study get other seeds

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
            salt=token.salt,
            parent_pid=os.getpid(),
        )
        for i, gpu in enumerate(slots)
    ]
    failed: list[int] = []
    try:
        with StopSignals() as signals, TrialProgress(target=target, quiet=quiet) as progress:
            progress.update(study.get_trials(deepcopy=False))
            try:
                if len(jobs) == 1:
                    _work(
                        jobs[0],
                        tickets,
                        on_trial=None
                        if quiet
                        else lambda s, _t: progress.update(s.get_trials(deepcopy=False)),
                        signals=signals,
                    )
                else:
                    failed = _run_processes(context, jobs, tickets, study, beat, progress, signals)
            except TrialInterrupted as exc:
                signals.signum = exc.signum
            except DiskFullError as exc:
                raise _disk_full_stop(d, location, exc) from None
            if signals.requested:
                assert signals.signum is not None
                raise _interrupted_stop(d, study, target, signals.signum, before)
            progress.update(study.get_trials(deepcopy=False))
    finally:
        finish_run(study, token)
    return summarize_run(d, location, study, target, tickets.started.value, tuple(failed), packing)


def _run_processes(
    context: Any,
    jobs: list[_WorkerJob],
    tickets: _Tickets,
    study: Any,
    beat: HeartbeatSettings,
    progress: TrialProgress,
    signals: StopSignals,
) -> list[int]:
    """Run ``jobs`` as worker processes until they end; returns the exit codes of those that
    crashed. A signal to this process stops them (:func:`_stop_workers`) and raises
    :class:`.TrialInterrupted`; a worker that stopped on a full disk stops the others and raises
    :class:`.DiskFullError`."""
    processes = [
        context.Process(target=_work, args=(job, tickets), name=f"effscale-worker-{job.index}")
        for job in jobs
    ]
    with ignore_sigint():  # a Ctrl-C now must not reach workers still importing torch
        for process in processes:
            process.start()
    try:
        while any(p.is_alive() for p in processes):
            with signals.interruptible():
                time.sleep(_POLL_S)
            if any(p.exitcode == EXIT_DISK_FULL for p in processes):
                break
            progress.update(study.get_trials(deepcopy=False))
    except TrialInterrupted:
        _stop_workers(processes, study)
        raise
    if any(p.exitcode == EXIT_DISK_FULL for p in processes):
        _stop_workers(processes, study)
        full = [t for t in study.get_trials(deepcopy=False) if _failed_for(t, DISK_FULL)]
        raise DiskFullError(
            "a worker could not write: the disk is full",
            number=full[-1].number if full else None,
            recorded=bool(full),
        )
    for process in processes:
        process.join()
    crashed = [
        p.exitcode for p in processes if p.exitcode and p.exitcode not in (EXIT_INTERRUPTED,)
    ]
    if any(p.exitcode == EXIT_INTERRUPTED for p in processes):
        signals.signum = signals.signum or signal.SIGTERM  # a worker was stopped from outside
    if crashed:  # fail the trials of the dead workers now; the rerun runs their retries
        sweep_stale_trials(study, beat)
    return crashed


def _stop_workers(processes: Sequence[Any], study: Any) -> None:
    """SIGTERM to every live worker; after :data:`STOP_GRACE_S` seconds SIGKILL to those still
    running, whose RUNNING trials are then told FAIL ``"interrupted"`` here."""
    for process in processes:
        if process.is_alive():
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    killed = {p.pid for p in processes if p.is_alive()}
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    if not killed:
        return
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.system_attrs.get(WORKER_ATTR)
        if isinstance(worker, dict) and worker.get("pid") in killed:
            _record_failure(study, trial, INTERRUPTED, "interrupted: its worker was killed")


def _failed_for(trial: Any, reason: str) -> bool:
    return trial.state.name == "FAIL" and trial.user_attrs.get("fail_reason") == reason


def _interrupted_stop(
    d: StudyDefinition, study: Any, target: int, signum: int, first_number: int
) -> RunStopped:
    trials = study.get_trials(deepcopy=False)
    interrupted = sum(1 for t in trials if t.number >= first_number and _failed_for(t, INTERRUPTED))
    finished = sum(1 for t in trials if t.state.name in ("COMPLETE", "PRUNED"))
    return RunStopped(
        f"interrupted by {signal_name(signum)}: {interrupted} interrupted trial(s) recorded FAIL "
        f'(fail_reason "{INTERRUPTED}"), {finished} of {target} finished; run `effscale search '
        f"{shell_path(d.path)}` again to go on",
        exit_code=128 + int(signum),
    )


def _disk_full_stop(
    d: StudyDefinition, location: StorageLocation, exc: DiskFullError
) -> RunStopped:
    if exc.number is None:
        what = "no trial could start"
    elif exc.recorded:
        what = f'trial {exc.number} recorded FAIL (fail_reason "{DISK_FULL}")'
    else:
        what = f"trial {exc.number} could not be recorded (the next run fails it as lost)"
    where = location.path.parent if location.path is not None else d.folder
    return RunStopped(
        f"disk full ({exc}): {what}; the run stopped and the trials already stored are "
        f"intact; free space (on {where} or where the trials write) and run `effscale search "
        f"{shell_path(d.path)}` again",
        exit_code=1,
    )
