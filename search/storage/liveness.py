"""Worker liveness: which process runs a trial, heartbeats, and the sweep that fails and retries
the trials of dead workers.

Every trial records its worker (host, pid, process start time) in the system attr
:data:`WORKER_ATTR`. A RUNNING trial is *stale* when that process is gone (same host: known at
once) or when its heartbeat is older than the grace period (any host):

* RDB storages (SQLite, PostgreSQL) use Optuna's heartbeat (``heartbeat_interval``,
  ``grace_period``; the trial_heartbeats table) when trials are long (training) or when
  ``EFFSCALE_HEARTBEAT_INTERVAL`` is set, with :class:`RetryStaleTrial` as the
  ``heartbeat_stale_trial_callback`` (Optuna 5.0's ``RetryHeartbeatStaleTrialCallback``,
  ``max_retry=1``);
* journal storages have no heartbeat in Optuna 5.0: effscale's worker writes the system attr
  :data:`HEARTBEAT_ATTR` every interval instead (:class:`TrialHeartbeat`).

:func:`sweep_stale_trials` (run before a search, between trials and by ``effscale storage
repair``) fails each stale trial with ``fail_reason = "worker_lost"`` and an ``error`` line,
then enqueues it once more with the same params and ``retry_of`` (never a retry of a retry).
Interval and grace come from ``EFFSCALE_HEARTBEAT_INTERVAL`` / ``EFFSCALE_GRACE_PERIOD``
(seconds; default 60 / 180) or the runner's keyword arguments.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

__all__ = [
    "HEARTBEAT_INTERVAL_S",
    "GRACE_PERIOD_S",
    "ENV_HEARTBEAT_INTERVAL",
    "ENV_GRACE_PERIOD",
    "WORKER_ATTR",
    "HEARTBEAT_ATTR",
    "HeartbeatSettings",
    "env_seconds",
    "heartbeat_settings",
    "heartbeat_forced",
    "worker_identity",
    "worker_alive",
    "TrialHeartbeat",
    "RetryStaleTrial",
    "StaleTrial",
    "find_stale_trials",
    "sweep_stale_trials",
    "retry_trial",
]

HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 180

ENV_HEARTBEAT_INTERVAL = "EFFSCALE_HEARTBEAT_INTERVAL"
ENV_GRACE_PERIOD = "EFFSCALE_GRACE_PERIOD"

#: trial system attr: the worker running the trial ({"host", "pid", "token", "heartbeat"})
WORKER_ATTR = "effscale:worker"
#: trial system attr: unix time of the last heartbeat (journal storages)
HEARTBEAT_ATTR = "effscale:heartbeat"

_log = logging.getLogger("effscale.storage")


@dataclass(frozen=True)
class HeartbeatSettings:
    """How often a running trial proves its worker alive (``interval``, seconds) and how long a
    silent trial is waited for before it is failed and retried (``grace``, seconds)."""

    interval: int = HEARTBEAT_INTERVAL_S
    grace: int = GRACE_PERIOD_S


def env_seconds(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}: must be a whole number of seconds >= 1, got {text!r}")
    return value


def heartbeat_forced() -> bool:
    """Whether ``EFFSCALE_HEARTBEAT_INTERVAL`` is set: then every trial (surrogate ones too)
    records Optuna's heartbeat on RDB storages."""
    return env_seconds(ENV_HEARTBEAT_INTERVAL) is not None


def heartbeat_settings(interval: int | None = None, grace: int | None = None) -> HeartbeatSettings:
    """The heartbeat settings: the arguments, else ``EFFSCALE_HEARTBEAT_INTERVAL`` /
    ``EFFSCALE_GRACE_PERIOD``, else 60 s and three intervals (180 s). The grace period must
    exceed the interval."""
    interval = interval if interval is not None else env_seconds(ENV_HEARTBEAT_INTERVAL)
    interval = HEARTBEAT_INTERVAL_S if interval is None else interval
    grace = grace if grace is not None else env_seconds(ENV_GRACE_PERIOD)
    grace = 3 * interval if grace is None else grace
    for name, value in (("heartbeat interval", interval), ("grace period", grace)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: must be a whole number of seconds >= 1, got {value!r}")
    if grace <= interval:
        raise ValueError(
            f"grace period: {grace} s must exceed the heartbeat interval "
            f"({interval} s), or live trials are failed; use {3 * interval}"
        )
    return HeartbeatSettings(interval=interval, grace=grace)


_HOST = socket.gethostname()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_token(pid: int) -> str | None:
    """A string that names process ``pid`` uniquely on this machine (boot id and start time),
    ``None`` if there is no such process. Without /proc, whether ``pid`` exists at all."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        text = stat.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        text = ""
    if text:
        fields = text[text.rfind(")") + 2 :].split()
        if fields and fields[0] in ("Z", "X"):  # a zombie is dead for our purpose
            return None
        start = fields[19] if len(fields) > 19 else "?"
        return f"{_boot_id()}:{start}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:
        pass
    return f"pid:{pid}"


def worker_identity(heartbeat_interval: int | None = None) -> dict[str, Any]:
    """This process as recorded in a trial's :data:`WORKER_ATTR`."""
    pid = os.getpid()
    return {
        "host": _HOST,
        "pid": pid,
        "token": _process_token(pid),
        "heartbeat": heartbeat_interval,
    }


def worker_alive(identity: Any) -> bool | None:
    """Whether the worker of a recorded identity still runs: ``True``/``False`` on its own
    host, ``None`` when that cannot be known here (another host, or no identity)."""
    if not isinstance(identity, dict) or identity.get("host") != _HOST:
        return None
    pid = identity.get("pid")
    if not isinstance(pid, int):
        return None
    token = _process_token(pid)
    return token is not None and token == identity.get("token")


class TrialHeartbeat:
    """A thread that writes ``time.time()`` to the trial's :data:`HEARTBEAT_ATTR` every
    ``interval`` seconds while the trial runs (journal storages, which have no heartbeat of
    their own). Use as a context manager around the objective."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="effscale-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
            except Exception:  # the trial finished meanwhile, or the storage is gone: stop
                return

    def __enter__(self) -> TrialHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------ stale trials


@dataclass(frozen=True)
class StaleTrial:
    """A RUNNING trial whose worker is gone: its ``number``, storage ``trial_id`` and why."""

    number: int
    trial_id: int
    reason: str


def _timestamp(value: Any) -> float | None:
    if isinstance(value, _dt.datetime):
        return value.timestamp()  # naive datetimes are local time in Optuna's storages
    return None


def _rdb_stale_ids(study: Any) -> set[int] | None:
    """Trial ids whose Optuna heartbeat is older than the grace period (RDB storages with a
    heartbeat), ``None`` when the storage has none."""

    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return None
    try:
        return set(storage._get_stale_trial_ids(study._study_id))
    except AttributeError:  # pragma: no cover - a future Optuna without the private helper
        return None


def _rdb_grace(storage: Any) -> Any:
    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDBStorage in _CachedStorage
    grace = getattr(backend, "grace_period", None)
    interval = getattr(backend, "heartbeat_interval", None)
    return grace if grace is not None else (2 * interval if interval else "?")


def find_stale_trials(
    study: Any, settings: HeartbeatSettings | None = None, *, now: float | None = None
) -> list[StaleTrial]:
    """The RUNNING trials of ``study`` whose worker is gone (see the module docstring).

    A trial is stale when its worker process no longer runs (same host), when Optuna's RDB
    heartbeat of it is older than the storage's grace period, when effscale's journal heartbeat
    (or, without one, its start) is older than ``settings.grace``, or when it never recorded a
    worker and started more than ``settings.grace`` ago (a worker killed before its first
    write). A trial whose worker runs on another host without any heartbeat cannot be judged
    and is left alone."""

    settings = settings or heartbeat_settings()
    now = time.time() if now is None else now
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    rdb_stale = _rdb_stale_ids(study)
    stale = []
    for trial in running:
        identity = trial.system_attrs.get(WORKER_ATTR)
        alive = worker_alive(identity)
        if alive:
            continue
        if alive is False:
            stale.append(
                StaleTrial(
                    trial.number,
                    trial._trial_id,
                    f"worker process {identity['pid']} on {identity['host']} died during the trial",
                )
            )
            continue
        if rdb_stale is not None and trial._trial_id in rdb_stale:
            stale.append(
                StaleTrial(
                    trial.number,
                    trial._trial_id,
                    f"no heartbeat within the grace period of {_rdb_grace(study._storage)} s",
                )
            )
            continue
        beat = trial.system_attrs.get(HEARTBEAT_ATTR)
        start = _timestamp(trial.datetime_start)
        if isinstance(identity, dict) and identity.get("heartbeat") and rdb_stale is None:
            last = beat if isinstance(beat, (int, float)) and math.isfinite(beat) else start
        elif not isinstance(identity, dict):
            last = start
        else:
            continue  # another host, no heartbeat: cannot tell
        if last is not None and now - last > settings.grace:
            stale.append(
                StaleTrial(
                    trial.number,
                    trial._trial_id,
                    f"no heartbeat for {now - last:.0f} s (grace {settings.grace} s)",
                )
            )
    return stale


def retry_trial(study: Any, trial: Any, reason: str) -> int | None:
    """Enqueue ``trial`` once more with the same params and ``retry_of``/``retry_reason``
    user attrs; a retry is never retried again. Returns the number of the retry's original
    trial, or ``None`` when no retry was made."""
    if trial.user_attrs.get("retry_of") is not None:
        return None
    if not trial.params:
        return None  # killed before it sampled anything: a fresh trial does the same
    study.enqueue_trial(
        dict(trial.params), user_attrs={"retry_of": trial.number, "retry_reason": reason}
    )
    return trial.number


def sweep_stale_trials(
    study: Any,
    settings: HeartbeatSettings | None = None,
    *,
    retry: bool = True,
    now: float | None = None,
) -> list[StaleTrial]:
    """Fail every stale trial (:func:`find_stale_trials`) with ``fail_reason = "worker_lost"``
    and an ``error`` line, then retry it once (:func:`retry_trial`). Safe to run from several
    processes at once: only the one that fails a trial retries it. Returns the trials failed."""

    storage = study._storage
    failed = []
    for stale in find_stale_trials(study, settings, now=now):
        try:
            storage.set_trial_user_attr(stale.trial_id, "fail_reason", "worker_lost")
            storage.set_trial_user_attr(stale.trial_id, "error", f"worker lost: {stale.reason}")
            if not storage.set_trial_state_values(stale.trial_id, state=TrialState.FAIL):
                continue
        except (UpdateFinishedTrialError, KeyError):
            continue  # finished meanwhile, or another process failed it first
        failed.append(stale)
        _log.warning("effscale: trial %d failed: worker lost (%s)", stale.number, stale.reason)
        if retry:
            retry_trial(study, storage.get_trial(stale.trial_id), f"worker lost: {stale.reason}")
    return failed


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """``RetryHeartbeatStaleTrialCallback`` (Optuna 5.0's name for
    ``RetryFailedTrialCallback``) that re-enqueues a heartbeat-stale trial through
    :func:`retry_trial`: same params, a ``retry_of`` user attr, never a retry of a retry."""

    def __init__(self, max_retry: int = 1) -> None:
        with warnings.catch_warnings():  # experimental in Optuna 5.0
            warnings.simplefilter("ignore")
            super().__init__(max_retry=max_retry)

    def __call__(self, study: Any, trial: Any) -> None:
        if self._max_retry is not None and self._max_retry < 1:
            return
        retry_trial(study, trial, "worker lost: no heartbeat within the grace period")
