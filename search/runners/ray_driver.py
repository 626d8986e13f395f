"""The Ray Tune driver: run a study on a Ray cluster, the same trials recorded in the same Optuna
study.

``effscale search STUDY.toml --backend ray [--address auto|HOST:PORT]`` gives the same records as
the Optuna backend (``effscale status``, ``export`` and the dashboard see no difference), but the
trials run as Ray Tune trials on whatever nodes the cluster has.

Design
------
The search algorithm is an :class:`~ray.tune.search.optuna.OptunaSearch` (:class:`EffscaleSearch`)
fed the study's sampler (:func:`~effscale.search.runners.optuna_runner.make_sampler`), the study's Optuna
storage and its name, with a define-by-run space that is the study's own
:func:`effscale.search.space.suggest`. So the driver asks the sampler for a point exactly as an Optuna
worker would: ``study.ask()`` creates the trial in the shared storage and the sampler sees every
finished and running trial. Two things are overridden, for the reasons below; nothing is copied
from Tune's results into Optuna afterwards.

* The trial is evaluated on the *same* ``optuna.Trial``: the Tune trainable opens the storage,
  builds ``optuna.Trial(study, trial_id)`` and calls :class:`effscale.search.objective.Objective` on it,
  which re-reads the sampled parameters and records the user attrs and the ``cost_ratio``
  constraint itself, then ``study.tell``\\s the result. Records are therefore identical by
  construction; the only addition is the user attr ``ray_node_id`` (the Ray node that ran the
  trial). OptunaSearch's own bookkeeping would record only params and a value and would tell a
  trial stopped early by Tune's scheduler COMPLETE, where the Optuna backend records PRUNED.
* An infeasible sample is recorded in the driver (PRUNED, with ``infeasible_reason``, in
  milliseconds) and never becomes a Tune trial, so it is never trained nor even scheduled.

Which side finishes a trial: the trainable tells COMPLETE (and PRUNED for a grid point that
another trial holds or a diverged training), so a finished result is in the storage before Tune
hears of it; the driver (:meth:`EffscaleSearch.on_trial_complete`) tells PRUNED when Tune's
scheduler stopped the trial (``pruned_at_epoch``, ``prune_reason = "pruner"``, the value being
the last reported AP, as with Optuna's pruners) and FAIL when the trial failed for the last time.
The driver tells through a study handle with a ``RandomSampler``: ``GridSampler.after_trial``
calls ``study.stop()``, which raises outside ``study.optimize()``.

Pruners map onto Tune schedulers that stop trials without pausing them (a paused proxy training
has no checkpoint to resume from, so it would train twice): ``median`` → ``MedianStoppingRule``
(the counterpart of Optuna's MedianPruner: ``n_warmup_steps`` → ``grace_period``,
``n_startup_trials`` → ``min_samples_required``; ASHA would be a different rule),
``successive_halving`` → ``ASHAScheduler`` with one bracket, ``hyperband`` →
``AsyncHyperBandScheduler`` (ASHA with Optuna's number of brackets; the synchronous
``HyperBandScheduler`` pauses trials). One Tune iteration is one epoch; the surrogate, which
reports once, runs FIFO. ``trial.should_prune()`` is always false on Ray: Tune decides.

Counting is the Optuna runner's: the run wants ``n_trials`` finished (COMPLETE or PRUNED) trials,
counted in the storage, so other processes filling the same study are taken into account. A trial
that finally fails is replaced within the run (at most as many replacements as trials were
missing at the start, so a broken set-up cannot loop forever); the searcher itself starts no more
than ``max_concurrent`` trials at a time (Tune's ``max_concurrent_trials`` wraps the searcher in a
``ConcurrencyLimiter``, which after ``Tuner.restore`` still counts the trials of the lost driver
as running).

Failures and interruptions
--------------------------
``FailureConfig(max_failures)`` restarts a crashed trial on the same Optuna trial (the attempt
count is the system attr ``effscale:ray_attempts``); a failed attempt's ``error`` and
``fail_reason`` are kept aside in the system attr ``effscale:ray_failure`` and become user attrs
only when the last attempt has failed, so a retried trial that succeeds looks like any other.
A worker that died without a Python error gives ``fail_reason = "worker_lost"``.

Tune's experiment state lives in ``storage_path`` (default ``<study-file-stem>.ray/`` next to the
study file), one experiment per run that did not finish, named in ``<study>-<key>.json`` there.
Ctrl-C stops Tune cleanly; the trials it interrupted are told FAIL (``error`` starts with
``interrupted``, ``fail_reason = "interrupted"``) and ``effscale`` prints one line and exits 130
(:class:`~..errors.RunStopped`). A local Ray that effscale starts listens on 127.0.0.1 only; an
``--address`` where nothing answers is refused within :data:`RAY_CONNECT_TIMEOUT_S` seconds.
Running the same command again (also after ``kill -9``) restores the experiment with ``Tuner.restore``: trials of
that experiment still RUNNING in Optuna are told FAIL and are not resumed
(``resume_unfinished=False``: a resumed function trial would start over on a trial that may be
half recorded), and new trials replace them, so the study ends with exactly ``n_trials``
finished trials and no trial runs twice. Changing the resources per trial, the
retries or the pruner between the two runs starts a new experiment instead (their RUNNING trials
are failed the same way); ``n_trials`` and ``max_concurrent`` may change.

The side that runs on Ray's workers (the trainable) is :mod:`.ray_worker`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.trial import TrialState
from ray import tune
from ray._private import ray_constants
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ..data import prepare_data
from ..definition import StudyDefinition
from ..errors import ParameterError, RunStopped
from ..objective import Objective, train_inputs
from ..packing import AUTO, check_trials_per_gpu, decide_packing, resolve_packing
from ..space import suggest
from ..storage import StorageLocation, check_workers, open_storage, resolve_storage_url
from .common import (
    RunSummary,
    TrialProgress,
    make_sampler,
    open_study,
    remaining_trials,
    summarize_run,
    target_trials,
)
from .ray_worker import (
    ATTEMPTS_ATTR,
    EXPERIMENT_ATTR,
    FAILURE_ATTR,
    FEASIBLE_KEY,
    METRIC,
    NODE_ATTR,
    NUMBER_KEY,
    TRIAL_KEY,
    TUNE_TRIAL_ATTR,
    ObjectiveFactory,
    RayJob,
    record_worker,
    trainable,
)

__all__ = [
    "EXPERIMENT_ATTR",
    "ATTEMPTS_ATTR",
    "FAILURE_ATTR",
    "TUNE_TRIAL_ATTR",
    "NODE_ATTR",
    "RayOptions",
    "EffscaleSearch",
    "make_scheduler",
    "resolve_options",
    "run_study",
]

logger = logging.getLogger(__name__)

_INTERRUPTED = (
    "interrupted: the search stopped while this trial ran (Ctrl-C or a killed "
    "driver); a new trial replaces it"
)


# ------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class RayOptions:
    """The resolved Ray settings of a run (command line over ``[execution]``)."""

    address: str | None
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int | None
    max_failures: int
    storage_path: Path
    local_gpus: tuple[int, ...] = ()

    @property
    def resources(self) -> dict[str, float]:
        """Tune's resources of one trial."""
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


def resolve_options(
    definition: StudyDefinition,
    *,
    workers: int | None = None,
    gpus: Sequence[int] | None = None,
    trials_per_gpu: int | str | None = None,
    address: str | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    max_concurrent: int | None = None,
    max_failures: int | None = None,
    storage_path: str | Path | None = None,
) -> RayOptions:
    """Resolve the Ray options; ``None`` takes the study file's ``[execution]`` value.

    ``gpus`` (device indices) are for a Ray started here: it sees only those GPUs, and a trial
    gets ``1 / trials_per_gpu`` of one unless ``gpus_per_trial`` says otherwise
    (``trials_per_gpu = "auto"`` is then :func:`effscale.search.packing.resolve_packing`'s choice, with
    the class count from the study file; :func:`run_study` passes the data's). ``workers``
    stands for ``max_concurrent`` when that is not given.
    """
    ex = definition.execution
    address = address if address is not None else ex.address
    gpu_list = tuple(ex.gpus if gpus is None else gpus)
    per_gpu = check_trials_per_gpu(ex.trials_per_gpu if trials_per_gpu is None else trials_per_gpu)
    if gpu_list and address is not None:
        raise ParameterError(
            "gpus",
            f"device indices pick GPUs of a Ray started here, but --address "
            f"{address} joins a running cluster whose GPUs Ray assigns; drop --gpus "
            "(and [execution] gpus) and use --gpus-per-trial",
        )
    cpus = ex.cpus_per_trial if cpus_per_trial is None else float(cpus_per_trial)
    if not (math.isfinite(cpus) and cpus > 0):
        raise ParameterError("cpus_per_trial", f"must be > 0, got {cpus:g}")
    gpu_share = gpus_per_trial if gpus_per_trial is not None else ex.gpus_per_trial
    if gpu_share is None and gpu_list and per_gpu == AUTO:
        per_gpu = resolve_packing(definition, gpus=gpu_list).trials_per_gpu
    if gpu_share is None:
        gpu_share = 1.0 / int(per_gpu) if gpu_list else 0.0
    gpu_share = float(gpu_share)
    if not math.isfinite(gpu_share) or gpu_share < 0 or (gpu_share > 1 and gpu_share % 1):
        raise ParameterError(
            "gpus_per_trial", f"must be a fraction in [0, 1] or a whole number, got {gpu_share:g}"
        )
    if (
        definition.objective.kind == "train"
        and definition.train.device == "cuda"
        and gpu_share == 0
    ):
        raise ValueError(
            'train.device: "cuda" needs GPUs on Ray; give --gpus-per-trial '
            '(e.g. 0.25) or set device = "auto"'
        )
    concurrent = max_concurrent if max_concurrent is not None else ex.max_concurrent
    if concurrent is None and workers is not None:
        concurrent = workers
    if concurrent is not None and concurrent < 1:
        raise ParameterError("max_concurrent", f"must be >= 1, got {concurrent}")
    failures = ex.max_failures if max_failures is None else max_failures
    if failures < 0:
        raise ParameterError("max_failures", f"must be >= 0, got {failures}")
    if storage_path is not None:
        folder = Path(storage_path)
        if not folder.is_absolute():
            folder = definition.folder / folder
    elif ex.storage_path is not None:
        folder = ex.storage_path
    else:
        folder = definition.folder / f"{definition.path.stem}.ray"
    return RayOptions(
        address=address,
        cpus_per_trial=cpus,
        gpus_per_trial=gpu_share,
        max_concurrent=concurrent,
        max_failures=failures,
        storage_path=folder.resolve(),
        local_gpus=gpu_list if address is None else (),
    )


# ---------------------------------------------------------------------------------- schedulers


def make_scheduler(definition: StudyDefinition) -> Any:
    """The Tune scheduler standing for the study's pruner (see the module docstring)."""
    kind = definition.pruner.kind
    options = definition.pruner.kwargs()
    if kind == "none" or definition.objective.kind != "train":
        return FIFOScheduler()
    budget = definition.train.epochs or 100  # epochs; a steps or seconds budget: 100 at most
    common: dict[str, Any] = {"time_attr": "training_iteration", "metric": METRIC, "mode": "max"}
    if kind == "median":
        return MedianStoppingRule(
            **common,
            grace_period=options.get("n_warmup_steps", 0) + 1,
            min_samples_required=max(1, options.get("n_startup_trials", 5)),
            min_time_slice=10**9,  # never pause a trial for lack of samples: it cannot resume
            hard_stop=True,
        )
    # ASHA stops every trial that reaches max_t; one past the last epoch, the trial has told
    # COMPLETE by then (a stop at the last epoch would record a finished trial PRUNED)
    if kind == "successive_halving":
        low = options.get("min_resource", "auto")
        low = 1 if low == "auto" else max(1, int(low))
        factor = options.get("reduction_factor", 4)
        grace = low * factor ** options.get("min_early_stopping_rate", 0)
        return ASHAScheduler(
            **common,
            max_t=max(budget, grace) + 1,
            grace_period=grace,
            reduction_factor=factor,
            brackets=1,
        )
    low = max(1, int(options.get("min_resource", 1)))
    high = options.get("max_resource", "auto")
    high = max(budget if high == "auto" else int(high), low)
    factor = options.get("reduction_factor", 3)
    brackets = math.floor(math.log(high / low, factor)) + 1 if high > low else 1
    return ASHAScheduler(
        **common,
        max_t=max(high, budget) + 1,
        grace_period=low,
        reduction_factor=factor,
        brackets=brackets,
    )


# -------------------------------------------------------------------------- the driver's state


@dataclass
class _Live:
    """What a running driver knows; the searcher (which Tune pickles) looks it up by experiment
    name, so a searcher restored from an experiment folder gets this run's settings."""

    definition: StudyDefinition
    location: StorageLocation
    target: int
    max_concurrent: int
    failure_cap: int
    objective: Objective
    node_id: str
    pointer: Path
    resumed_at: int = 0
    progress: Any = None
    dispatched: int = 0
    failed: int = 0
    finished: bool = False


_LIVE: dict[str, _Live] = {}


def _study_sampler(live: _Live) -> Any:
    """The study's sampler, as the Optuna backend's first worker makes it; a resumed run gets
    other seeds (``resumed_at``)."""
    return make_sampler(live.definition, resumed_at=live.resumed_at)


def _live(experiment: str) -> _Live:
    try:
        return _LIVE[experiment]
    except KeyError:
        raise RuntimeError(
            f"effscale: no running search for Ray experiment {experiment!r}; "
            "start it with `effscale search --backend ray`"
        ) from None


class _SpaceFunction:
    """The define-by-run space: the study's own sampling of a point (by experiment name, so that
    it pickles small). Returns whether the point is feasible, for :meth:`EffscaleSearch.suggest`."""

    def __init__(self, experiment: str) -> None:
        self.experiment = experiment

    def __call__(self, trial: Any) -> dict[str, Any]:
        live = _live(self.experiment)
        d = live.definition
        point = suggest(
            trial,
            d.space,
            d.constraint,
            measured_ratio=live.objective.measured_ratio
            if d.constraint.kind == "measured"
            else None,
        )
        return {FEASIBLE_KEY: bool(point.feasible)}


class EffscaleSearch(OptunaSearch):
    """OptunaSearch on the study's storage, name and sampler; see the module docstring.

    Tune calls :meth:`suggest` for each new trial: it returns ``None`` while ``max_concurrent``
    trials run or while running trials might still fill the study, and ``FINISHED`` when the
    study holds its trials (or too many failed). Only the experiment name is pickled; everything
    else comes from the driver running now.
    """

    def __init__(self, experiment: str) -> None:
        live = _live(experiment)
        self._experiment = experiment
        self._open: dict[str, tuple[int, int]] = {}
        self._need: int | None = None
        super().__init__(
            space=_SpaceFunction(experiment),
            metric=METRIC,
            mode="max",
            sampler=_study_sampler(live),
            study_name=live.definition.study.name,
            storage=open_storage(live.location),
        )

    # -- the study, opened lazily after unpickling ------------------------------------------

    _ot_study: Any
    _storage: Any

    def _setup_study(self, mode: Any) -> None:
        self._ot_study = optuna.load_study(
            study_name=self._study_name,
            storage=self._storage,
            sampler=self._sampler,
            pruner=optuna.pruners.NopPruner(),
        )
        # trials are told through a sampler that does nothing after a trial: GridSampler's
        # after_trial calls study.stop(), which raises outside study.optimize()
        self._teller = optuna.load_study(
            study_name=self._study_name,
            storage=self._storage,
            sampler=optuna.samplers.RandomSampler(),
            pruner=optuna.pruners.NopPruner(),
        )

    def _ensure_study(self) -> Any:
        if self._ot_study is None:
            live = _live(self._experiment)
            self._storage = open_storage(live.location)
            self._sampler = _study_sampler(live)
            self._study_name = live.definition.study.name
            self._setup_study(self._mode)
        return self._ot_study

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(
            _ot_study=None,
            _teller=None,
            _storage=None,
            _sampler=None,
            _ot_trials={},
            _open={},
            _need=None,
            _completed_trials=set(),
        )
        return state

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:  # all state is in the Optuna storage
            json.dump({"experiment": self._experiment}, f)

    def restore(self, checkpoint_path: str) -> None:
        pass

    # -- Tune's calls -----------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]

        live = _live(self._experiment)
        study = self._ensure_study()
        while True:
            if self._need is None:
                self._need = remaining_trials(
                    live.definition, study, live.target, running=len(self._open)
                ) - len(self._open)
            if self._need <= 0 or live.failed >= live.failure_cap:
                if self._open:
                    return None  # running trials may still fail and need replacing
                live.finished = True
                _write_pointer(live.pointer, self._experiment, None, finished=True)
                return Searcher.FINISHED
            if len(self._open) >= live.max_concurrent:
                return None
            config = super().suggest(trial_id)  # study.ask() + the study's suggest()
            assert config is not None  # a define-by-run space always gives a point
            trial = self._ot_trials.pop(trial_id)
            storage = study._storage
            storage.set_trial_system_attr(trial._trial_id, EXPERIMENT_ATTR, self._experiment)
            storage.set_trial_system_attr(trial._trial_id, TUNE_TRIAL_ATTR, trial_id)
            record_worker(storage, trial._trial_id)  # the driver, until a Ray worker takes it
            self._need -= 1
            if config.pop(FEASIBLE_KEY):
                self._open[trial_id] = (trial._trial_id, trial.number)
                config.update({TRIAL_KEY: trial._trial_id, NUMBER_KEY: trial.number})
                live.dispatched += 1
                return config
            self._record_infeasible(live, trial)

    def _record_infeasible(self, live: _Live, trial: Any) -> None:
        """Record an infeasible point as the Optuna backend would (PRUNED), here and now."""

        trial.set_user_attr(NODE_ATTR, live.node_id)
        try:
            value = live.objective(trial)
        except optuna.TrialPruned:
            self._teller.tell(trial.number, state=TrialState.PRUNED)
        except Exception:
            self._teller.tell(trial.number, state=TrialState.FAIL)
        else:  # not expected: the point was infeasible when sampled
            self._teller.tell(trial.number, value)
        _update_progress(live, self._teller)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Nothing: the trainable reports each epoch to Optuna itself."""

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        entry = self._open.pop(trial_id, None)
        self._need = None
        if entry is None:
            return
        live = _live(self._experiment)
        self._ensure_study()
        try:
            _settle(self._teller, entry[0], result=result, error=error)
            if self._teller._storage.get_trial(entry[0]).state.name == "FAIL":
                live.failed += 1
        except Exception:
            logger.exception("effscale: could not settle trial %s", entry[1])
        _update_progress(live, self._teller)


def _settle(study: Any, trial_id: int, *, result: dict | None, error: bool) -> None:
    """Finish a trial that Tune has finished but the trainable did not tell."""
    storage = study._storage
    frozen = storage.get_trial(trial_id)
    if frozen.state.is_finished():
        return
    if error:
        failure = frozen.system_attrs.get(FAILURE_ATTR) or {
            "error": "worker lost: the Ray worker of the trial died without a Python error (see "
            "the Tune trial's error.txt)",
            "fail_reason": "worker_lost",
        }
        for key, value in failure.items():
            storage.set_trial_user_attr(trial_id, key, value)
        study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
    elif result and result.get("epoch") is not None:  # stopped by Tune's scheduler
        storage.set_trial_user_attr(trial_id, "pruned_at_epoch", int(result["epoch"]))
        storage.set_trial_user_attr(trial_id, "prune_reason", "pruner")
        study.tell(frozen.number, state=TrialState.PRUNED, skip_if_finished=True)
    else:
        storage.set_trial_user_attr(trial_id, "error", "RayError: the trial ended without a result")
        storage.set_trial_user_attr(trial_id, "fail_reason", "error")
        study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)


def _update_progress(live: _Live, study: Any) -> None:
    if live.progress is not None:
        live.progress.update(study.get_trials(deepcopy=False))


def _sweep(
    study: Any, experiment: str, reason: str = _INTERRUPTED, fail_reason: str = "worker_lost"
) -> list[int]:
    """Tell FAIL every trial of ``experiment`` still RUNNING (its driver is gone, or stopped:
    ``fail_reason = "interrupted"``); their numbers."""
    storage = study._storage
    swept = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.system_attrs.get(EXPERIMENT_ATTR) != experiment:
            continue
        storage.set_trial_user_attr(trial._trial_id, "error", reason)
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", fail_reason)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        swept.append(trial.number)
    return swept


# ------------------------------------------------------------------------------------ the run


#: seconds a Ray address gets to accept a TCP connection before it is refused
RAY_CONNECT_TIMEOUT_S = 5.0


def _check_address(address: str) -> None:
    """Refuse, within :data:`RAY_CONNECT_TIMEOUT_S`, a ``HOST:PORT`` (or ``ray://HOST:PORT``)
    where nothing accepts a TCP connection: ``ray.init`` would retry it for minutes. ``auto``
    is left to Ray, which answers at once when it finds no cluster."""
    if address == "auto":
        return
    text = address.split("://", 1)[1] if "://" in address else address
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ParameterError(
            "address",
            f"{address!r} is not auto or HOST:PORT",
            "write e.g. --address 10.0.0.5:6379 (the head node's GCS port) or --address auto",
        )
    try:
        socket.create_connection((host, int(port_text)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {RAY_CONNECT_TIMEOUT_S:g} s"
        raise ParameterError(
            "address",
            f"no Ray cluster answers at {address!r} ({reason})",
            "start one with `ray start --head` (see docs/cluster.md), check the host and port, "
            "or drop --address for a local Ray",
        ) from None


def _init_local(**kwargs: Any) -> None:
    """Start a Ray on this machine that listens on 127.0.0.1 only. Ray binds its servers to
    the node's IP and turns a given 127.0.0.1 into the machine's outward address, except where
    clusters are off (``ray_constants.ENABLE_RAY_CLUSTER``, Ray's setting for Windows and
    macOS); that switch is turned off for the call, so no port of this Ray is reachable from
    other machines. A cluster is joined with ``--address`` instead."""
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
    finally:
        if saved is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved


def _connect(options: RayOptions) -> bool:
    """Join the cluster at ``options.address`` or start a local Ray on 127.0.0.1; whether we
    started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if options.address is not None:
        _check_address(options.address)
        try:
            ray.init(address=options.address, **kwargs)
        except ConnectionError as exc:
            raise ParameterError(
                "address",
                f"no Ray cluster at {options.address!r} ({exc}); start "
                "one with `ray start --head` (see docs/cluster.md) or drop "
                "--address for a local Ray",
            ) from None
        return True
    if options.local_gpus:
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, options.local_gpus))
        try:
            _init_local(num_gpus=len(options.local_gpus), **kwargs)
        finally:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
    else:
        _init_local(**kwargs)
    return True


def _concurrency(options: RayOptions) -> int:
    """How many trials run at once: ``max_concurrent``, else what the cluster fits; checks that
    one trial fits at all (Tune would wait for ever)."""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if options.cpus_per_trial > cpus:
        raise ParameterError(
            "cpus_per_trial",
            f"{options.cpus_per_trial:g} CPUs per trial, but the "
            f"Ray cluster has {cpus:g}; ask for fewer",
        )
    if options.gpus_per_trial > gpus:
        raise ParameterError(
            "gpus_per_trial",
            f"{options.gpus_per_trial:g} GPUs per trial, but the "
            f"Ray cluster has {gpus:g}; add GPU nodes or drop --gpus-per-trial",
        )
    if options.max_concurrent is not None:
        return options.max_concurrent
    fits = int(cpus // options.cpus_per_trial)
    if options.gpus_per_trial > 0:
        fits = min(fits, int(round(gpus / options.gpus_per_trial, 6)))
    return max(1, fits)


def _pointer_path(options: RayOptions, study_name: str, location: StorageLocation) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", study_name).strip("-") or "study"
    key = hashlib.sha256(f"{location.url}\n{study_name}".encode()).hexdigest()[:8]
    return options.storage_path / f"{safe}-{key}.json"


def _driver_running(state: dict[str, Any]) -> int | None:
    """The pid of another effscale process on this machine that runs the experiment of a
    pointer, else ``None`` (drivers on other machines cannot be checked)."""
    driver = state.get("driver")
    if not isinstance(driver, dict) or driver.get("host") != socket.gethostname():
        return None
    pid = driver.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return None
    return pid if b"effscale" in command or b"search" in command else None


def _new_experiment(pointer: Path) -> str:
    """A new experiment name: the study's, the time and a random suffix."""
    return (
        f"{pointer.stem.rsplit('-', 1)[0]}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    )


def _read_pointer(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("experiment"), str) else None


def _write_pointer(
    path: Path, experiment: str, settings: dict[str, Any] | None, *, finished: bool = False
) -> None:
    state = _read_pointer(path) or {}
    state.update(
        experiment=experiment,
        finished=finished,
        driver={"host": socket.gethostname(), "pid": os.getpid()},
    )
    if settings is not None:
        state["settings"] = settings
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.replace(path)


def run_study(
    definition: StudyDefinition,
    *,
    n_trials: int | None = None,
    workers: int | None = None,
    gpus: Sequence[int] | None = None,
    trials_per_gpu: int | str | None = None,
    storage: str | None = None,
    quiet: bool = False,
    address: str | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    max_concurrent: int | None = None,
    max_failures: int | None = None,
    storage_path: str | Path | None = None,
    cpu_count: int | None = None,
    objective: ObjectiveFactory = Objective,
) -> RunSummary:
    """Run (or resume) the study on Ray until it holds ``n_trials`` finished trials.

    Takes :func:`.optuna_runner.run_study`'s keywords plus the Ray options of
    :func:`resolve_options`. Joins the cluster at ``address`` (or uses the Ray this process has
    initialized, or starts a local one and stops it afterwards). With ``gpus``, no
    ``gpus_per_trial`` and ``trials_per_gpu = "auto"``, the share of a trial is ``1 / M`` with
    ``M`` from :func:`..packing.resolve_packing` (``cpu_count`` as in the Optuna runner);
    its reason is printed unless ``quiet`` and stored in the study's ``packing`` user attr.
    ``objective`` makes the objective on the workers (a subclass injects faults in tests; Ray
    pickles it). Raises :class:`~..errors.RunStopped` (exit 130) after a Ctrl-C, once the
    interrupted trials are recorded FAIL.
    """
    d = definition
    target = target_trials(d, n_trials)
    if workers is not None and workers < 1:
        raise ParameterError("workers", f"must be >= 1, got {workers}", "give 1 or more")
    ex = d.execution
    per_gpu = check_trials_per_gpu(ex.trials_per_gpu if trials_per_gpu is None else trials_per_gpu)
    gpu_list = tuple(ex.gpus if gpus is None else gpus)
    location = resolve_storage_url(storage or d.storage_url, base_dir=d.folder)
    data, num_classes = prepare_data(d)
    packing = None
    shares = (
        bool(gpu_list)
        and (address if address is not None else ex.address) is None
        and (gpus_per_trial if gpus_per_trial is not None else ex.gpus_per_trial) is None
    )
    if shares:
        per_gpu, packing = decide_packing(
            d,
            gpus=gpu_list,
            trials_per_gpu=per_gpu,
            num_classes=num_classes,
            storage=location,
            cpu_count=cpu_count,
            quiet=quiet,
        )
    options = resolve_options(
        d,
        workers=workers,
        gpus=gpus,
        trials_per_gpu=per_gpu,
        address=address,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        max_concurrent=max_concurrent,
        max_failures=max_failures,
        storage_path=storage_path,
    )
    if d.objective.kind == "train":
        assert data is not None  # a training study has data (study_file checks it)
        train_inputs(d, data)  # the training settings are valid before the storage is touched

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started_ray = _connect(options)
    try:
        concurrency = _concurrency(options)
        check_workers(location, concurrency)
        study = open_study(d, location, open_storage(location))
        job = RayJob(
            definition=d,
            location=location,
            num_classes=num_classes,
            data=data,
            use_gpu=options.gpus_per_trial > 0,
            threads=max(1, int(options.cpus_per_trial)),
            objective=objective,
        )
        return _run(d, location, study, target, options, concurrency, job, quiet, packing)
    finally:
        if started_ray:
            ray.shutdown()


def _run(
    d: StudyDefinition,
    location: StorageLocation,
    study: Any,
    target: int,
    options: RayOptions,
    concurrency: int,
    job: RayJob,
    quiet: bool,
    packing: dict[str, Any] | None = None,
) -> RunSummary:
    pointer = _pointer_path(options, d.study.name, location)
    previous = _read_pointer(pointer)
    if previous is not None and not previous.get("finished"):
        pid = _driver_running(previous)
        if pid is not None:
            raise ParameterError(
                "study.name",
                f"another effscale search (pid {pid}) runs this "
                f"study with Ray from {options.storage_path}",
                "wait for it or stop it",
            )
        _sweep(study, previous["experiment"])  # its driver is gone: no trial of it is running
    remaining = remaining_trials(d, study, target)
    if remaining <= 0:
        pointer.unlink(missing_ok=True)
        return summarize_run(d, location, study, target, 0, (), packing)
    if packing is not None:
        study.set_user_attr("packing", packing)

    settings = {
        "resources": options.resources,
        "max_failures": options.max_failures,
        "pruner": [d.pruner.kind, sorted(d.pruner.kwargs().items())],
    }
    settings = json.loads(json.dumps(settings))
    restore = (
        previous is not None
        and not previous.get("finished")
        and previous.get("settings") == settings
        and tune.Tuner.can_restore(options.storage_path / previous["experiment"])
    )
    experiment = (
        previous["experiment"] if restore and previous is not None else _new_experiment(pointer)
    )
    trials_before = study.get_trials(deepcopy=False)
    waiting = {t.number for t in trials_before if t.state.name == "WAITING"}  # grid retries
    live = _Live(
        definition=d,
        location=location,
        target=target,
        max_concurrent=concurrency,
        failure_cap=max(1, remaining),
        resumed_at=len(trials_before),
        objective=Objective(d, num_classes=job.num_classes, data=job.data, quiet=True),
        node_id=ray.get_runtime_context().get_node_id(),
        pointer=pointer,
    )
    _LIVE[experiment] = live
    saved_env = {name: os.environ.get(name) for name in _TUNE_ENV}
    os.environ.update(_TUNE_ENV, TUNE_MAX_PENDING_TRIALS_PG=str(concurrency))
    runnable = tune.with_resources(tune.with_parameters(trainable, job=job), options.resources)
    try:
        with TrialProgress(target=target, quiet=quiet) as progress:
            live.progress = progress
            progress.update(study.get_trials(deepcopy=False))
            tuner = None
            if restore:
                try:
                    with _quiet_tune_logs():
                        tuner = tune.Tuner.restore(
                            str(options.storage_path / experiment),
                            trainable=runnable,
                            resume_unfinished=False,
                            resume_errored=False,
                        )
                except Exception as exc:  # e.g. killed before Tune saved a state
                    logger.warning(
                        "effscale: cannot restore Ray experiment %s (%s); starting a new one",
                        experiment,
                        exc,
                    )
            if tuner is None:
                if restore:
                    del _LIVE[experiment]
                    experiment = _new_experiment(pointer)
                    _LIVE[experiment] = live
                tuner = tune.Tuner(
                    runnable,
                    tune_config=tune.TuneConfig(
                        search_alg=EffscaleSearch(experiment),
                        scheduler=make_scheduler(d),
                        num_samples=-1,
                        reuse_actors=True,
                    ),
                    run_config=tune.RunConfig(
                        name=experiment,
                        storage_path=str(options.storage_path),
                        failure_config=tune.FailureConfig(max_failures=options.max_failures),
                        verbose=0,
                    ),
                )
            _write_pointer(pointer, experiment, settings)
            with _quiet_tune_logs():
                tuner.fit()
    finally:
        swept = [] if live.finished else _sweep(study, experiment, fail_reason="interrupted")
        _LIVE.pop(experiment, None)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if not live.finished:  # Tune stopped on Ctrl-C (or SIGUSR1) and returned
        raise RunStopped(
            f"stopped; {len(swept)} running trial(s) recorded FAIL (fail_reason "
            f'"interrupted"); run the same command again to go on',
            exit_code=130,
        )
    pointer.unlink(missing_ok=True)
    trials_after = study.get_trials(deepcopy=False)
    started = (
        len(trials_after)
        - len(trials_before)
        + sum(1 for t in trials_after if t.number in waiting and t.state.name != "WAITING")
    )
    return summarize_run(d, location, study, target, started, (), packing)


def _not_tune_restore_advice(record: logging.LogRecord) -> bool:
    return "Tuner.restore" not in record.getMessage()  # effscale's advice: run it again


class _quiet_tune_logs:
    """Tune's INFO lines, its complaint that trials left no result files (the results are in the
    Optuna storage) and its ``Tuner.restore`` advice stay out of the output; errors still show."""

    _LEVELS = {"ray.tune": logging.WARNING, "ray.tune.analysis.experiment_analysis": logging.ERROR}

    def __enter__(self) -> None:
        self._saved = {name: logging.getLogger(name).level for name in self._LEVELS}
        for name, level in self._LEVELS.items():
            logging.getLogger(name).setLevel(level)
        logging.getLogger("ray.tune.tune").addFilter(_not_tune_restore_advice)

    def __exit__(self, *exc: Any) -> None:
        for name, level in self._saved.items():
            logging.getLogger(name).setLevel(level)
        logging.getLogger("ray.tune.tune").removeFilter(_not_tune_restore_advice)


#: Tune settings of the driver: no per-trial CSV/JSON/TensorBoard files (the Optuna storage holds
#: the results) and as many pending trials as may run at once
_TUNE_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_MAX_PENDING_TRIALS_PG": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_RESULT_BUFFER_LENGTH": "1",
    # a trial already finished in the study (told before a restart, or failed for
    # good) ends without a result: its record is in the study, not in Tune
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
}
