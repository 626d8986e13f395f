"""Where studies live: storage URLs, their defaults, and the Optuna storage objects.

URLs
----
* ``sqlite:///name.db`` is relative to the study file's folder; ``sqlite:////abs/name.db`` is
  absolute. The default is ``sqlite:///<study-file-stem>.db`` next to the study file.
* ``journal:///name.journal`` (relative) or ``journal:////abs/name.journal``: an append-only
  journal file (``JournalStorage(JournalFileBackend(path))``).
* ``postgresql://…``, ``mysql://…``: an RDB server, passed to ``RDBStorage`` as is.

Parallel workers (measured on 2 CPU cores, Optuna 5.0.0, a trivial objective so that the storage
is the bottleneck; ``benchmarks`` style: 8 spawn processes × 25 trials each)
---------------------------------------------------------------------------------------------
SQLite with a 60 s busy timeout: 4×25 in 6.7 s, 8×25 in 22.0 s, 16×10 in 16.2 s, all trials
complete, no lock errors. Journal file: 4×25 in 1.5 s, 8×25 in 2.4 s, 16×10 in 3.9 s. Reported
earlier: SQLite 8×50 in 63.7 s, journal 400/400 in 12.8 s, SQLite with 32 workers broke.

So the default stays SQLite for any worker count up to :data:`SQLITE_MAX_WORKERS` (8): the same
file then serves one worker and many, a study can be resumed with a different ``--workers``, and
real proxy trials (seconds to minutes) put far less load on it than the measurement did. Beyond
8 workers on SQLite the runner refuses and names the fix (a journal file or PostgreSQL).

RDB storages get a heartbeat when trials are long (training): a trial whose process died is
failed after ``grace_period`` seconds and retried once (``RetryHeartbeatStaleTrialCallback``,
Optuna 5.0's name for ``RetryFailedTrialCallback``). Journal storages have no heartbeat in
Optuna 5.0: a killed worker leaves its trial RUNNING; it does not count as finished.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SQLITE_MAX_WORKERS",
    "SQLITE_TIMEOUT_S",
    "HEARTBEAT_INTERVAL_S",
    "GRACE_PERIOD_S",
    "StorageLocation",
    "default_storage_url",
    "resolve_storage_url",
    "open_storage",
    "check_workers",
]

SQLITE_MAX_WORKERS = 8
SQLITE_TIMEOUT_S = 60
HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 180

_SCHEMES = ("sqlite", "journal", "postgresql", "postgresql+psycopg2", "postgresql+psycopg",
            "mysql", "mysql+pymysql")


@dataclass(frozen=True)
class StorageLocation:
    """A resolved storage: its ``kind`` (``sqlite``, ``journal`` or ``rdb``), the ``url`` with
    absolute paths, and ``path`` (the file, for sqlite and journal; ``None`` for a server)."""

    kind: str
    url: str
    path: Path | None

    @property
    def is_file(self) -> bool:
        """Whether the storage is a local file (sqlite or journal)."""
        return self.path is not None


def default_storage_url(study_file: str | Path) -> str:
    """``sqlite:///<stem>.db`` (relative to the study file's folder)."""
    return f"sqlite:///{Path(study_file).stem}.db"


def resolve_storage_url(url: str, *, base_dir: str | Path) -> StorageLocation:
    """Resolve ``url`` with relative file paths taken relative to ``base_dir`` (the study's folder).

    Raises ``ValueError`` naming ``study.storage`` for an unknown scheme or an empty path.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"study.storage: {url!r} is not a storage URL; use sqlite:///name.db, "
                         "journal:///name.journal or postgresql://user@host/db")
    scheme, rest = url.split("://", 1)
    if scheme not in _SCHEMES:
        raise ValueError(f"study.storage: unknown scheme {scheme!r}; use sqlite, journal, "
                         "postgresql or mysql")
    if scheme in ("sqlite", "journal"):
        if not rest.startswith("/") or rest in ("/", "//"):
            raise ValueError(f"study.storage: {url!r} has no file path; write "
                             f"{scheme}:///name (relative) or {scheme}:////abs/path/name")
        raw = rest[1:]
        if raw == ":memory:":
            raise ValueError("study.storage: an in-memory database cannot be shared by workers "
                             "or resumed; use a file")
        path = Path(raw)
        if not path.is_absolute():
            path = Path(base_dir) / path
        path = path.resolve()
        return StorageLocation(kind=scheme, url=f"{scheme}:///{path}", path=path)
    return StorageLocation(kind="rdb", url=url, path=None)


def check_workers(location: StorageLocation, workers: int) -> None:
    """Refuse SQLite for more than :data:`SQLITE_MAX_WORKERS` parallel workers."""
    if location.kind == "sqlite" and workers > SQLITE_MAX_WORKERS:
        raise ValueError(
            f"--workers: SQLite is unreliable beyond {SQLITE_MAX_WORKERS} parallel workers "
            f"(got {workers}); set [study] storage = \"journal:///"
            f"{location.path.stem if location.path else 'study'}.journal\" or use PostgreSQL"
        )


def open_storage(location: StorageLocation, *, heartbeat: bool = False) -> Any:
    """The Optuna storage object for ``location``.

    SQLite gets a ``timeout`` of :data:`SQLITE_TIMEOUT_S` seconds for its lock. With
    ``heartbeat`` (long trials), RDB storages (SQLite included) record a heartbeat every
    :data:`HEARTBEAT_INTERVAL_S` seconds and retry a stale trial once.
    """
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if location.kind == "journal":
        assert location.path is not None
        location.path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(location.path)))
    kwargs: dict[str, Any] = {}
    if location.kind == "sqlite":
        assert location.path is not None
        location.path.parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    with warnings.catch_warnings():  # the heartbeat API is marked experimental in Optuna 5.0
        warnings.simplefilter("ignore", ExperimentalWarning)
        if heartbeat:
            kwargs.update(
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=GRACE_PERIOD_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        return RDBStorage(location.url, **kwargs)
