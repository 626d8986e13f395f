"""Where studies live: storage URLs, their defaults, and the Optuna storage objects they open.

URLs
----
* ``sqlite:///name.db`` is relative to the study file's folder; ``sqlite:////abs/name.db`` is
  absolute. The default is ``sqlite:///<study-file-stem>.db`` next to the study file.
* ``journal:///name.journal`` (relative) or ``journal:////abs/name.journal``: an append-only
  journal file (``JournalStorage`` over effscale's :class:`~.journal.SafeJournalFileBackend`).
* ``postgresql://…``, ``mysql://…``: an RDB server, passed to ``RDBStorage`` as is.

Parallel workers (``docs/reliability.md`` has the figures and the commands that produce them)
-------------------------------------------------------------------------------------------
Measured on 2 CPU cores, Optuna 5.0.0, 8 effscale workers × 25 surrogate trials: SQLite (60 s
busy timeout), the journal file and PostgreSQL all record 200/200 trials, no duplicates, no lock
errors. SQLite broke with 32 workers on a busy CPU (102 exceptions, trials left RUNNING). So the
default stays SQLite up to :data:`SQLITE_MAX_WORKERS` (8) workers: one file serves one worker and
many, a study can be resumed with another ``--workers``, and real proxy trials (seconds to
minutes) load it far less than the measurement did. Beyond 8 workers on SQLite the runner refuses
and names the fix (a journal file or PostgreSQL).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna import storages
from optuna.exceptions import ExperimentalWarning

from ..errors import ParameterError
from .journal import SafeJournalFileBackend, check_journal
from .liveness import HeartbeatSettings, RetryStaleTrial, heartbeat_settings

__all__ = [
    "SQLITE_MAX_WORKERS",
    "SQLITE_TIMEOUT_S",
    "StorageLocation",
    "default_storage_url",
    "resolve_storage_url",
    "open_storage",
    "check_workers",
]

SQLITE_MAX_WORKERS = 8
SQLITE_TIMEOUT_S = 60
#: openings of an RDB storage tried when another process is creating the same new schema
_SCHEMA_ATTEMPTS = 5
#: what an RDB error says when another process made the same new schema first
_SCHEMA_RACE_SIGNS = ("already exists", "UNIQUE constraint failed: alembic_version")

_SCHEMES = (
    "sqlite",
    "journal",
    "postgresql",
    "postgresql+psycopg2",
    "postgresql+psycopg",
    "mysql",
    "mysql+pymysql",
)


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
        raise ValueError(
            f"study.storage: {url!r} is not a storage URL; use sqlite:///name.db, "
            "journal:///name.journal or postgresql://user@host/db"
        )
    scheme, rest = url.split("://", 1)
    if scheme not in _SCHEMES:
        raise ValueError(
            f"study.storage: unknown scheme {scheme!r}; use sqlite, journal, postgresql or mysql"
        )
    if scheme in ("sqlite", "journal"):
        if not rest.startswith("/") or rest in ("/", "//"):
            raise ValueError(
                f"study.storage: {url!r} has no file path; write "
                f"{scheme}:///name (relative) or {scheme}:////abs/path/name"
            )
        raw = rest[1:]
        if raw == ":memory:":
            raise ValueError(
                "study.storage: an in-memory database cannot be shared by workers "
                "or resumed; use a file"
            )
        path = Path(raw)
        if not path.is_absolute():
            path = Path(base_dir) / path
        path = path.resolve()
        return StorageLocation(kind=scheme, url=f"{scheme}:///{path}", path=path)
    return StorageLocation(kind="rdb", url=url, path=None)


def check_workers(location: StorageLocation, workers: int) -> None:
    """Refuse SQLite for more than :data:`SQLITE_MAX_WORKERS` parallel workers."""
    if location.kind == "sqlite" and workers > SQLITE_MAX_WORKERS:
        raise ParameterError(
            "workers",
            f"SQLite is unreliable beyond {SQLITE_MAX_WORKERS} parallel workers (got {workers})",
            f'set [study] storage = "journal:///'
            f'{location.path.stem if location.path else "study"}.journal" or use PostgreSQL',
        )


def open_storage(location: StorageLocation, *, heartbeat: bool | HeartbeatSettings = False) -> Any:
    """The Optuna storage object for ``location``.

    SQLite gets a ``timeout`` of :data:`SQLITE_TIMEOUT_S` seconds for its lock. With
    ``heartbeat`` (``True``: :func:`heartbeat_settings`), RDB storages (SQLite included) record
    Optuna's heartbeat every interval and retry a stale trial once (:class:`RetryStaleTrial`).
    Journal files use :class:`SafeJournalFileBackend` with a lock released by force after
    :data:`JOURNAL_LOCK_GRACE_S`; a journal with a corrupt line is refused with the fix.
    """

    if location.kind == "journal":
        assert location.path is not None
        location.path.parent.mkdir(parents=True, exist_ok=True)
        backend = SafeJournalFileBackend(str(location.path))
        try:
            return storages.JournalStorage(backend)
        except ValueError as exc:  # JSONDecodeError or "Invalid log format." while replaying
            report = check_journal(location.path)
            if report.ok:
                raise
            raise ValueError(
                f"study.storage: {report.describe()}; run `effscale storage repair "
                f"STUDY.toml` (it keeps a .bak copy)"
            ) from exc
    kwargs: dict[str, Any] = {}
    if location.kind == "sqlite":
        assert location.path is not None
        location.path.parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    with warnings.catch_warnings():  # the heartbeat API is marked experimental in Optuna 5.0
        warnings.simplefilter("ignore", ExperimentalWarning)
        if heartbeat:
            settings = (
                heartbeat if isinstance(heartbeat, HeartbeatSettings) else heartbeat_settings()
            )
            kwargs.update(
                heartbeat_interval=settings.interval,
                grace_period=settings.grace,
                heartbeat_stale_trial_callback=RetryStaleTrial(max_retry=1),
            )
        for attempt in range(_SCHEMA_ATTEMPTS):
            try:
                return storages.RDBStorage(location.url, **kwargs)
            except Exception as exc:  # sqlalchemy's OperationalError, by message
                # Two processes opening a new database at once (a search and `effscale status`,
                # or two workers) both create the schema; the slower one finds a table that the
                # other has just made (or a version row it has just written). The schema is
                # there now: opening again succeeds.
                racing = any(sign in str(exc) for sign in _SCHEMA_RACE_SIGNS)
                if not racing or attempt == _SCHEMA_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover
