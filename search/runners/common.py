"""What both backends share: the study's sampler and pruner, the study opened with its
fingerprint, how many trials a run still needs, the progress line and the run's summary.

Counting. ``n_trials`` is the number of *finished* (COMPLETE or PRUNED) trials the study should
hold. A run adds only ``n_trials − already finished`` trials, so rerunning a finished study adds
none, and a run interrupted or with failed trials is completed by the next one. Before a trial
starts, the trials that hold a place are counted across every process on the storage
(:func:`active_trials`: finished and running ones), so that concurrent runs stop at exactly
``n_trials``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import optuna.pruners as pruners
import optuna.samplers as samplers
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..definition import MAX_TRIALS, StudyDefinition
from ..errors import ParameterError
from ..space import grid_size
from ..storage import StorageLocation
from ..trials import FINISHED, best_trial, is_feasible, trial_ap, trial_coordinates
from ..version import effscale_version

__all__ = [
    "RunSummary",
    "make_sampler",
    "make_pruner",
    "open_study",
    "target_trials",
    "remaining_trials",
    "active_trials",
    "summarize_run",
    "format_duration",
    "TrialProgress",
]


@dataclass(frozen=True)
class RunSummary:
    """What a run did: the study, how many trials it started, the state counts after it, the
    best feasible trial's number (``None`` if there is none yet), the exit codes of worker
    processes that failed (empty when all went well) and, on GPUs, the line saying how many
    trials share each GPU and why (``packing``)."""

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


# ---------------------------------------------------------------------------- samplers, pruners


def make_sampler(
    definition: StudyDefinition, *, worker: int = 0, resumed_at: int = 0, salt: int | None = None
) -> optuna.samplers.BaseSampler:
    """The study's sampler for worker ``worker``: seeds differ per worker, except for the grid,
    whose shared seed keeps the workers on one order of points. ``resumed_at`` is the number of
    trials the study held when this run began: a resumed run gets other seeds than the first
    one (which would otherwise draw the same random start-up points again), and the same
    study state always gives the same seeds. ``salt`` (a run's token, given when another run
    works on the same study: :func:`..storage.register_run`) is mixed into the seed, so that
    two processes started together on one study draw different points."""
    name = definition.study.sampler
    seed = definition.study.seed
    if name == "grid":
        return samplers.GridSampler(definition.grid(), seed=seed or 0)
    worker_seed: int | None
    if seed is None:
        worker_seed = None
    elif salt is not None:
        state = np.random.SeedSequence([seed, worker, resumed_at, salt]).generate_state(1)
        worker_seed = int(state[0])
    elif resumed_at:
        worker_seed = int(np.random.SeedSequence([seed, worker, resumed_at]).generate_state(1)[0])
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


def make_pruner(definition: StudyDefinition) -> optuna.pruners.BasePruner:
    """The study's pruner (``NopPruner`` for ``kind = "none"``)."""
    kinds: dict[str, Any] = {
        "none": pruners.NopPruner,
        "median": pruners.MedianPruner,
        "hyperband": pruners.HyperbandPruner,
        "successive_halving": pruners.SuccessiveHalvingPruner,
    }
    pruner: optuna.pruners.BasePruner = kinds[definition.pruner.kind](**definition.pruner.kwargs())
    return pruner


# ------------------------------------------------------------------------------------ the study


def open_study(
    definition: StudyDefinition, location: StorageLocation, storage: Any
) -> optuna.Study:
    """Create or load the study of ``definition`` in ``storage``; a new study gets the study
    file, its fingerprint and the effscale version as user attrs, and an existing one must have
    the same fingerprint (a :class:`.ParameterError` naming the fix otherwise)."""
    study = optuna.create_study(
        storage=storage,
        study_name=definition.study.name,
        directions=[optuna.study.StudyDirection[d.upper()] for d in definition.directions],
        load_if_exists=True,
    )
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise ParameterError(
                "study.name",
                f"study {definition.study.name!r} in {location.url} was not made by effscale "
                "search",
                "choose another name",
            )
        study.set_user_attr("study_file", definition.text)
        study.set_user_attr("study_file_path", str(definition.path))
        study.set_user_attr("fingerprint", definition.fingerprint())
        study.set_user_attr("effscale_version", effscale_version())
    elif stored != definition.fingerprint():
        raise ParameterError(
            "study.name",
            f"study {definition.study.name!r} in {location.url} was made from a different search "
            "definition ([base], [space], [constraint], [objective], [data], [train], sampler or "
            "objectives changed)",
            "restore them or give the study a new name",
        )
    return study


def _grid_key(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


def target_trials(definition: StudyDefinition, n_trials: int | None) -> int:
    """The finished trials a run aims at: ``n_trials``, else the study file's; a
    :class:`.ParameterError` naming ``n_trials`` when it is below 1, above
    :data:`~..definition.MAX_TRIALS` or beyond a grid's points."""
    target = n_trials if n_trials is not None else definition.target_trials()
    if target < 1:
        raise ParameterError("n_trials", f"must be >= 1, got {target}", "ask for 1 or more")
    if target > MAX_TRIALS:
        raise ParameterError(
            "n_trials",
            f"{target:,} is more than {MAX_TRIALS:,}, more trials than any sampler or storage "
            "here handles",
            f"ask for at most {MAX_TRIALS:,}",
        )
    points = grid_size(definition.grid()) if definition.study.sampler == "grid" else None
    if points is not None and target > points:
        raise ParameterError(
            "n_trials",
            f"{target} exceeds the {points} grid points (a grid point never runs twice)",
            f"use at most {points}",
        )
    return target


def remaining_trials(
    definition: StudyDefinition, study: optuna.Study, target: int, *, running: int = 0
) -> int:
    """Trials still to finish towards ``target`` (those ``running`` now included). For a grid,
    failed points are enqueued to be retried, but only into free slots (``target`` less the
    finished points, the ``running`` trials and the retries already queued): a retry queued
    when the running trials will reach the target would stay WAITING for ever."""
    trials = study.get_trials(deepcopy=False)
    if definition.study.sampler != "grid":
        return target - sum(1 for t in trials if t.state.name in FINISHED)
    done = {
        _grid_key(t.params)
        for t in trials
        if t.state.name in FINISHED and t.user_attrs.get("duplicate_of") is None
    }
    queued = {
        _grid_key(t.system_attrs.get("fixed_params") or t.params)
        for t in trials
        if t.state.name == "WAITING"
    }
    free = target - len(done) - running - len(queued)
    failed = sorted({_grid_key(t.params) for t in trials if t.state.name == "FAIL"} - done - queued)
    for key in failed[: max(0, free)]:
        study.enqueue_trial(dict(key))
    return target - len(done)


def active_trials(definition: StudyDefinition, trials: Sequence[Any]) -> int:
    """The trials of ``trials`` (all of a study's) that hold a place towards ``n_trials``: the
    finished and the running ones; for a grid, the distinct finished points (a duplicate
    point pruned by the objective holds none) and the running trials."""
    running = sum(1 for t in trials if t.state.name == "RUNNING")
    if definition.study.sampler != "grid":
        return running + sum(1 for t in trials if t.state.name in FINISHED)
    done = {
        _grid_key(t.params)
        for t in trials
        if t.state.name in FINISHED and t.user_attrs.get("duplicate_of") is None
    }
    return running + len(done)


def summarize_run(
    definition: StudyDefinition,
    location: StorageLocation,
    study: optuna.Study,
    target: int,
    started: int,
    failed_workers: tuple[int, ...],
    packing: dict[str, Any] | None = None,
) -> RunSummary:
    """The :class:`RunSummary` of a run that started ``started`` trials towards ``target``."""
    trials = study.get_trials(deepcopy=False)

    def count(state: str) -> int:
        return sum(1 for t in trials if t.state.name == state)

    best = best_trial(trials)
    return RunSummary(
        study_name=definition.study.name,
        storage_url=location.url,
        target=target,
        started=started,
        n_complete=count("COMPLETE"),
        n_pruned=count("PRUNED"),
        n_failed=count("FAIL"),
        best_number=None if best is None else best.number,
        failed_workers=failed_workers,
        packing=None if packing is None else packing["reason"],
    )


# ------------------------------------------------------------------------------------- progress


def format_duration(seconds: float) -> str:
    """``seconds`` as ``H:MM:SS`` (``M:SS`` under an hour)."""
    whole = max(0, int(round(seconds)))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TrialProgress:
    """A rich progress line (trials finished, elapsed time, ETA, best AP so far, feasible
    fraction), or nothing when ``quiet``. The ETA is the trials still wanted times the mean
    wall time of the trials finished in this run (``–`` until one has)."""

    def __init__(self, *, target: int, quiet: bool) -> None:
        self.target = target
        self.quiet = quiet
        self._progress: Progress | None = None
        self._task: Any = None
        self._start = time.monotonic()
        self._finished_before: int | None = None

    def __enter__(self) -> TrialProgress:
        if not self.quiet:
            self._progress = Progress(
                TextColumn("trials"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"),
                TextColumn("{task.fields[note]}"),
            )
            self._progress.start()
            self._task = self._progress.add_task("search", total=self.target, note="", eta="–")
        self._start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def eta(self, finished: int) -> float | None:
        """Seconds until ``target`` trials are finished, from this run's pace; ``None`` until a
        trial has finished in this run."""
        if self._finished_before is None:
            self._finished_before = finished
        done = finished - self._finished_before
        if done <= 0:
            return None
        return max(0, self.target - finished) * (time.monotonic() - self._start) / done

    def update(self, trials: Sequence[Any]) -> None:
        """Show the state of ``trials`` (all trials of the study)."""
        finished = [t for t in trials if t.state.name in FINISHED]
        eta = self.eta(len(finished))
        if self._progress is None:
            return
        feasible = sum(1 for t in finished if is_feasible(t))
        note = f"feasible {feasible}/{len(finished)}"
        best = best_trial(trials)
        if best is not None:
            c = trial_coordinates(best)
            coords = " ".join(
                f"{k[0]} {c[k]:.3f}"
                for k in ("alpha", "beta", "gamma")
                if isinstance(c[k], (int, float))
            )
            note = f"best AP {trial_ap(best):.4f} (#{best.number}: {coords})  {note}"
        self._progress.update(
            self._task,
            completed=min(len(finished), self.target),
            note=note,
            eta="–" if eta is None else format_duration(eta),
        )
