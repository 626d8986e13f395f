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
(the default) is chosen by :func:`search.packing.resolve_packing` from the GPU memory, the CPU
cores and the largest trial; the run prints its reason and stores it in the study's ``packing``
user attr (a hand-given value is stored there too).
A trial that raises is recorded FAIL with its ``error`` user attr and the study goes on.

Dead workers. Each trial records its worker (:data:`search.storage.WORKER_ATTR`); journal
storages get effscale's heartbeat thread, RDB storages Optuna's heartbeat when trials train (or
when ``EFFSCALE_HEARTBEAT_INTERVAL`` is set). Before a run, between trials (at most once per
heartbeat interval) and after the workers exit, :func:`search.storage.sweep_stale_trials` fails
the trials of dead workers (``fail_reason = "worker_lost"``) and enqueues each once more with the
same params (``retry_of``); a sweep inside a run hands the ticket back, so the retry runs in the
same run. Interval and grace period: ``heartbeat_interval``/``grace_period`` arguments, else
``EFFSCALE_HEARTBEAT_INTERVAL``/``EFFSCALE_GRACE_PERIOD``, else 60 s / 180 s.

Nothing touches the storage until the study file, the options, the data and the GPUs have been
checked.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from search.objective import Objective, train_inputs, trial_coordinates
from search.packing import AUTO, check_trials_per_gpu, decide_packing
from search.space import grid_size
from search.storage import (
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
from search.study_file import DataSection, StudyDefinition

__all__ = [
    "RunSummary",
    "run_study",
    "prepare_data",
    "make_sampler",
    "make_pruner",
    "best_trial",
    "pareto_front",
    "is_feasible",
    "effscale_version",
    "open_study",
    "remaining_trials",
    "target_trials",
    "summarize_run",
    "TrialProgress",
]

_POLL_S = 1.0
_FINISHED = ("COMPLETE", "PRUNED")


@dataclass(frozen=True)
class RunSummary:
    """What :func:`run_study` did: the study, how many trials it started, the state counts after
    it, the best feasible trial's number (``None`` if there is none yet), the exit codes of
    worker processes that failed (empty when all went well) and, on GPUs, the line saying how
    many trials share each GPU and why (``packing``)."""

    study_name: str
    storage_url: str
    target: int
    started: int
    n_complete: int
    n_pruned: int
    n_failed: int
    best_number: int | None
    failed_workers: tuple[int, ...] = ()
    packing: str | None = None


# ------------------------------------------------------------------------------- trial reading


def is_feasible(trial: Any) -> bool:
    """Whether all of a trial's constraint values are <= 0 (Optuna's definition)."""
    return all(value <= 0 for value in trial.constraints.values())


def best_trial(trials: Sequence[Any]) -> Any | None:
    """The feasible COMPLETE trial with the highest AP (the first objective), or ``None``."""
    candidates = [t for t in trials if t.state.name == "COMPLETE" and is_feasible(t)
                  and t.values and math.isfinite(t.values[0])]
    return max(candidates, key=lambda t: (t.values[0], -t.number), default=None)


def pareto_front(trials: Sequence[Any]) -> list[Any]:
    """Feasible COMPLETE trials not dominated in (max AP, min MACs), by trial number."""
    points = [t for t in trials if t.state.name == "COMPLETE" and is_feasible(t)
              and t.values and len(t.values) == 2]

    def dominates(a: Any, b: Any) -> bool:
        (ap_a, macs_a), (ap_b, macs_b) = a.values, b.values
        return ap_a >= ap_b and macs_a <= macs_b and (ap_a > ap_b or macs_a < macs_b)

    return [t for t in points if not any(dominates(o, t) for o in points if o is not t)]


def effscale_version() -> str:
    """The installed effscale version (``0+unknown`` from a plain checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("effscale")
    except PackageNotFoundError:
        return "0+unknown"


# ---------------------------------------------------------------------------- samplers, pruners


def make_sampler(definition: StudyDefinition, *, worker: int = 0, resumed_at: int = 0) -> Any:
    """The study's sampler for worker ``worker``: seeds differ per worker, except for the grid,
    whose shared seed keeps the workers on one order of points. ``resumed_at`` is the number of
    trials the study held when this run began: a resumed run gets other seeds than the first
    one (which would otherwise draw the same random start-up points again), and the same
    study state always gives the same seeds."""
    import optuna.samplers as samplers

    name = definition.study.sampler
    seed = definition.study.seed
    if name == "grid":
        return samplers.GridSampler(definition.grid(), seed=seed or 0)
    if seed is None:
        worker_seed = None
    elif resumed_at:
        import numpy as np

        worker_seed = int(np.random.SeedSequence([seed, worker, resumed_at])
                          .generate_state(1)[0])
    else:
        worker_seed = seed + worker
    if name == "tpe":
        return samplers.TPESampler(seed=worker_seed, multivariate=True, constant_liar=True)
    if name == "gp":
        return samplers.GPSampler(seed=worker_seed)
    if name == "nsga2":
        population = max(4, min(50, definition.target_trials() // 5))
        return samplers.NSGAIISampler(seed=worker_seed, population_size=population)
    return samplers.RandomSampler(seed=worker_seed)


def make_pruner(definition: StudyDefinition) -> Any:
    """The study's pruner (``NopPruner`` for ``kind = "none"``)."""
    import optuna.pruners as pruners

    kinds = {"none": pruners.NopPruner, "median": pruners.MedianPruner,
             "hyperband": pruners.HyperbandPruner,
             "successive_halving": pruners.SuccessiveHalvingPruner}
    return kinds[definition.pruner.kind](**definition.pruner.kwargs())


# ----------------------------------------------------------------------------------------- data


def _count_categories(data_dir: Path) -> int:
    from detector.data.coco import split_paths

    _, ann_file = split_paths(data_dir, "train")
    split_paths(data_dir, "val")
    categories = json.loads(ann_file.read_text()).get("categories") or []
    if not categories:
        raise ValueError(f"data.dir: {ann_file} lists no categories; give [base] num_classes")
    return len(categories)


def prepare_data(definition: StudyDefinition) -> tuple[DataSection | None, int]:
    """The data section with ``dir`` pointing at real files, and the number of classes.

    ``generate`` data is made once into ``.effscale-cache/`` next to the study file (named by a
    hash of its settings) and reused. The classes are the data's; ``[base] num_classes``, when
    given, must agree. A surrogate study needs no data: it gets ``(None, classes)`` with classes
    from ``[base] num_classes`` (90 when not given).
    """
    d = definition
    if d.objective.kind != "train" or d.data is None:
        return None, d.base.num_classes or 90
    data = d.data
    if data.generate is not None:
        g = data.generate
        key = hashlib.sha256(json.dumps([g.train, g.val, g.seed, g.image_size, g.num_classes])
                             .encode()).hexdigest()[:10]
        folder = d.folder / ".effscale-cache" / f"data-{d.path.stem}-{key}"
        if not (folder / "val" / "instances.json").is_file():
            try:
                from detector.data.synthetic import make_synthetic_coco
            except ModuleNotFoundError as exc:
                raise ValueError("data.generate: detector.data.synthetic is missing in this "
                                 "checkout; use data.dir") from exc
            try:
                make_synthetic_coco(folder, n_train=g.train, n_val=g.val, seed=g.seed,
                                    image_size=g.image_size, num_classes=g.num_classes)
            except (OSError, ValueError):
                if not (folder / "val" / "instances.json").is_file():  # not another process's
                    raise
        data = replace(data, dir=folder)
        classes = g.num_classes
    else:
        assert data.dir is not None
        classes = _count_categories(data.dir)
    if d.base.num_classes not in (None, classes):
        raise ValueError(f"base.num_classes: {d.base.num_classes}, but the data has {classes} "
                         f"classes; drop num_classes or set it to {classes}")
    return data, classes


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


class _GuardedObjective:
    """The objective, with the worker's identity written to each trial first and, on journal
    storages, a heartbeat thread while it runs (see :mod:`search.storage`)."""

    def __init__(self, objective: Objective, *, journal: bool,
                 heartbeat: HeartbeatSettings, rdb_heartbeat: bool) -> None:
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
        self.tickets.count_retries(sum(
            1 for t in study.get_trials(deepcopy=False)
            if t.number >= self.first_number and t.user_attrs.get("retry_of") is not None))


def _device(job: _WorkerJob) -> str:
    if job.definition.objective.kind != "train":
        return "cpu"
    if job.gpu is not None:
        return "cuda" if job.pin_gpu else f"cuda:{job.gpu}"
    device = job.definition.train.device
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _work(job: _WorkerJob, tickets: _Tickets,
          on_trial: Callable[[Any, Any], None] | None = None) -> None:
    """One worker: load the study, then run trials while tickets last."""
    if job.gpu is not None and job.pin_gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(job.gpu)
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    d = job.definition
    training = d.objective.kind == "train"
    if training and job.threads is not None:  # CPU workers share the cores instead of fighting
        import torch

        torch.set_num_threads(job.threads)
    storage = open_storage(job.location,
                           heartbeat=job.heartbeat if job.rdb_heartbeat else False)
    study = optuna.load_study(study_name=job.study_name, storage=storage,
                              sampler=make_sampler(d, worker=job.index, resumed_at=job.resumed_at),
                              pruner=make_pruner(d))
    objective = _GuardedObjective(
        Objective(d, num_classes=job.num_classes, data=job.data, device=_device(job),
                  gpu=job.gpu, quiet=True),  # one progress line: the search's
        journal=job.location.kind == "journal", heartbeat=job.heartbeat,
        rdb_heartbeat=job.rdb_heartbeat)
    callbacks: list[Callable[[Any, Any], None]] = []
    if d.study.sampler != "grid":
        callbacks.append(optuna.study.MaxTrialsCallback(
            job.target, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    callbacks.append(_SweepCallback(tickets, job.heartbeat, job.resumed_at))
    callbacks.append(_TicketCallback(tickets))
    if on_trial is not None:
        callbacks.append(on_trial)
    if not tickets.take():
        return
    study.optimize(objective, catch=(Exception,), callbacks=callbacks, gc_after_trial=training)


# ------------------------------------------------------------------------------------- progress


class TrialProgress:
    """A rich progress line (trials finished, best AP so far, feasible fraction), or nothing."""

    def __init__(self, *, target: int, quiet: bool) -> None:
        self.target = target
        self.quiet = quiet
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> "TrialProgress":
        if not self.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
                TimeElapsedColumn

            self._progress = Progress(TextColumn("trials"), BarColumn(bar_width=20),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      TextColumn("{task.fields[note]}"))
            self._progress.start()
            self._task = self._progress.add_task("search", total=self.target, note="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, trials: Sequence[Any]) -> None:
        if self._progress is None:
            return
        finished = [t for t in trials if t.state.name in _FINISHED]
        feasible = sum(1 for t in finished if t.user_attrs.get("feasible"))
        note = f"feasible {feasible}/{len(finished)}"
        best = best_trial(trials)
        if best is not None:
            c = trial_coordinates(best)
            coords = " ".join(f"{k[0]} {c[k]:.3f}" for k in ("alpha", "beta", "gamma")
                              if isinstance(c[k], (int, float)))
            note = f"best AP {best.values[0]:.4f} (#{best.number}: {coords})  {note}"
        self._progress.update(self._task, completed=min(len(finished), self.target), note=note)


# ------------------------------------------------------------------------------------ the run


def _slots(workers: int | None, gpus: Sequence[int], trials_per_gpu: int) -> list[int | None]:
    if not gpus:
        return [None] * (workers or 1)
    slots = [gpu for gpu in gpus for _ in range(trials_per_gpu)]
    if workers is not None and workers != len(slots):
        raise ValueError(f"--workers: {len(gpus)} GPU(s) × {trials_per_gpu} trial(s) per GPU "
                         f"make {len(slots)} slots, got --workers {workers}; drop --workers "
                         f"or set it to {len(slots)}")
    return slots


def _check_gpus(gpus: Sequence[int]) -> None:
    import torch

    count = torch.cuda.device_count()
    missing = [g for g in gpus if g >= count]
    if missing:
        raise ValueError(f"--gpus: GPU {missing[0]} is not visible (this machine has {count} "
                         "CUDA device(s)); list indices below that")


def open_study(definition: StudyDefinition, location: StorageLocation, storage: Any) -> Any:
    """Create or load the study of ``definition`` in ``storage``; a new study gets the study
    file, its fingerprint and the effscale version as user attrs, and an existing one must have
    the same fingerprint (``ValueError`` naming the fix otherwise). Shared by both backends."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=definition.study.name,
                                directions=list(definition.directions), load_if_exists=True)
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise ValueError(f"study.name: study {definition.study.name!r} in {location.url} "
                             "was not made by effscale search; choose another name")
        study.set_user_attr("study_file", definition.text)
        study.set_user_attr("study_file_path", str(definition.path))
        study.set_user_attr("fingerprint", definition.fingerprint())
        study.set_user_attr("effscale_version", effscale_version())
    elif stored != definition.fingerprint():
        raise ValueError(f"study.name: study {definition.study.name!r} in {location.url} was made "
                         "from a different search definition ([base], [space], [constraint], "
                         "[objective], [data], [train], sampler or objectives changed); restore "
                         "them or give the study a new name")
    return study


def _grid_key(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


def target_trials(definition: StudyDefinition, n_trials: int | None) -> int:
    """The finished trials a run aims at: ``n_trials``, else the study file's; a ``ValueError``
    naming ``--n-trials`` when it is below 1 or beyond a grid's points. Both runners use this."""
    target = n_trials if n_trials is not None else definition.target_trials()
    if target < 1:
        raise ValueError(f"--n-trials: must be >= 1, got {target}")
    points = grid_size(definition.grid()) if definition.study.sampler == "grid" else None
    if points is not None and target > points:
        raise ValueError(f"--n-trials: {target} exceeds the {points} grid points (a grid point "
                         f"never runs twice); use at most {points}")
    return target


def remaining_trials(definition: StudyDefinition, study: Any, target: int, *,
                     running: int = 0) -> int:
    """Trials still to finish towards ``target`` (those ``running`` now included). For a grid,
    failed points are enqueued to be retried, but only into free slots (``target`` less the
    finished points, the ``running`` trials and the retries already queued): a retry queued
    when the running trials will reach the target would stay WAITING for ever."""
    trials = study.get_trials(deepcopy=False)
    if definition.study.sampler != "grid":
        return target - sum(1 for t in trials if t.state.name in _FINISHED)
    done = {_grid_key(t.params) for t in trials
            if t.state.name in _FINISHED and t.user_attrs.get("duplicate_of") is None}
    queued = {_grid_key(t.system_attrs.get("fixed_params") or t.params) for t in trials
              if t.state.name == "WAITING"}
    free = target - len(done) - running - len(queued)
    failed = sorted({_grid_key(t.params) for t in trials if t.state.name == "FAIL"}
                    - done - queued)
    for key in failed[:max(0, free)]:
        study.enqueue_trial(dict(key))
    return target - len(done)


def summarize_run(definition: StudyDefinition, location: StorageLocation, study: Any,
                  target: int, started: int, failed_workers: tuple[int, ...],
                  packing: dict[str, Any] | None = None) -> RunSummary:
    """The :class:`RunSummary` of a run that started ``started`` trials towards ``target``."""
    trials = study.get_trials(deepcopy=False)
    count = lambda state: sum(1 for t in trials if t.state.name == state)  # noqa: E731
    best = best_trial(trials)
    return RunSummary(
        study_name=definition.study.name, storage_url=location.url, target=target,
        started=started, n_complete=count("COMPLETE"), n_pruned=count("PRUNED"),
        n_failed=count("FAIL"), best_number=None if best is None else best.number,
        failed_workers=failed_workers,
        packing=None if packing is None else packing["reason"],
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
) -> RunSummary:
    """Run (or resume) the study until it holds ``n_trials`` finished trials.

    ``None`` options take the study file's value (``[study] n_trials``, ``[execution] workers``,
    ``gpus``, ``trials_per_gpu``, ``[study] storage``). With ``gpus``, the workers are the GPU
    slots (``len(gpus) × trials_per_gpu``); ``trials_per_gpu = "auto"`` is chosen by
    :func:`search.packing.resolve_packing` (``cpu_count``: the cores it may count, default this
    process's), whose reason is printed unless ``quiet``, which also turns the progress display
    off.
    ``heartbeat_interval`` and ``grace_period`` (seconds) override ``EFFSCALE_HEARTBEAT_INTERVAL``
    and ``EFFSCALE_GRACE_PERIOD`` (default 60 / 180); giving either turns Optuna's heartbeat on
    for RDB storages even for surrogate trials.
    """
    import optuna

    d = definition
    ex = d.execution
    target = target_trials(d, n_trials)
    gpu_list = tuple(ex.gpus if gpus is None else gpus)
    per_gpu = check_trials_per_gpu(ex.trials_per_gpu if trials_per_gpu is None
                                   else trials_per_gpu)
    if workers is not None and workers < 1:
        raise ValueError(f"--workers: must be >= 1, got {workers}")
    wanted = workers if workers is not None else (None if gpu_list else ex.workers)
    location = resolve_storage_url(storage or d.storage_url, base_dir=d.folder)
    slots: list[int | None] | None = None
    if not gpu_list or per_gpu != AUTO:  # known now: check before the data is prepared
        slots = _slots(wanted, gpu_list, 1 if per_gpu == AUTO else int(per_gpu))
        check_workers(location, len(slots))
    beat = heartbeat_settings(heartbeat_interval, grace_period)
    rdb_heartbeat = location.kind != "journal" and (
        d.objective.kind == "train" or heartbeat_forced()
        or heartbeat_interval is not None or grace_period is not None)
    data, num_classes = prepare_data(d)
    if d.objective.kind == "train":
        train_inputs(d, data)  # the training settings are valid before the storage is touched
        if gpu_list:
            _check_gpus(gpu_list)
    packing = None
    if gpu_list:
        chosen, packing = decide_packing(d, gpus=gpu_list, trials_per_gpu=per_gpu,
                                         num_classes=num_classes, storage=location,
                                         cpu_count=cpu_count, quiet=quiet)
        if slots is None:  # auto: known only now
            slots = _slots(wanted, gpu_list, chosen)
            check_workers(location, len(slots))
    assert slots is not None

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(d, location,
                        open_storage(location, heartbeat=beat if rdb_heartbeat else False))
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
    threads = (max(1, (os.cpu_count() or 1) // len(slots))
               if len(slots) > 1 and not gpu_list else None)
    jobs = [_WorkerJob(definition=d, location=location, study_name=d.study.name, index=i,
                       gpu=gpu, pin_gpu=len(slots) > 1, data=data, num_classes=num_classes,
                       target=target, threads=threads, heartbeat=beat,
                       rdb_heartbeat=rdb_heartbeat, resumed_at=before)
            for i, gpu in enumerate(slots)]
    failed: list[int] = []
    with TrialProgress(target=target, quiet=quiet) as progress:
        progress.update(study.get_trials(deepcopy=False))
        if len(jobs) == 1:
            _work(jobs[0], tickets, on_trial=None if quiet else
                  lambda s, _t: progress.update(s.get_trials(deepcopy=False)))
        else:
            processes = [context.Process(target=_work, args=(job, tickets),
                                         name=f"effscale-worker-{job.index}") for job in jobs]
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
    started = len(trials_after) - before + sum(
        1 for t in trials_after if t.number in waiting and t.state.name != "WAITING")
    return summarize_run(d, location, study, target, started, tuple(failed), packing)
