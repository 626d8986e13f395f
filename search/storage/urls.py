"""Where studies live: storage URLs, their defaults, and the Optuna storage objects they open.

URLs
----
* ``sqlite:///name.db`` is relative to the study file's folder; ``sqlite:////abs/name.db`` is
  absolute. The default is ``sqlite:///<study-file-stem>.db`` next to the study file.
* ``journal:///name.journal`` (relative) or ``journal:////abs/name.journal``: an append-only
  journal file (``JournalStorage`` over effscale's :class:`~.journal.SafeJournalFileBackend`).
* ``postgresql://…``, ``mysql://…``: an RDB server, passed to ``RDBStorage`` as is.
  ``postgresql://`` is SQLAlchemy 2.1's psycopg 3 driver, a dependency of effscale
  (``psycopg[binary]``); ``postgresql+psycopg2://`` needs ``psycopg2-binary``. A missing driver,
  a refused or silent server (:data:`CONNECT_TIMEOUT_S`) and a file of the wrong kind (a
  folder, a study file given as a database or a journal) are refused in one line naming the fix
  (:func:`check_storage_file`, :func:`open_storage`).

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
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from ..errors import ParameterError
from .journal import SafeJournalFileBackend, check_journal, looks_like_journal
from .liveness import HeartbeatSettings, RetryStaleTrial, heartbeat_settings

__all__ = [
    "SQLITE_MAX_WORKERS",
    "SQLITE_TIMEOUT_S",
    "CONNECT_TIMEOUT_S",
    "StorageLocation",
    "default_storage_url",
    "resolve_storage_url",
    "masked_url",
    "check_storage_file",
    "check_rdb_driver",
    "rdb_connect_args",
    "open_storage",
    "check_workers",
]

SQLITE_MAX_WORKERS = 8
SQLITE_TIMEOUT_S = 60
#: seconds a database server gets to accept a connection before the storage is refused
CONNECT_TIMEOUT_S = 5
#: the first 16 bytes of every SQLite database file
_SQLITE_MAGIC = b"SQLite format 3\x00"
#: the install line for each RDB driver SQLAlchemy may ask for
_DRIVER_FIX = {
    "psycopg": "pip install 'psycopg[binary]' (effscale depends on it; reinstall effscale)",
    "psycopg2": "pip install psycopg2-binary, or write postgresql:// (psycopg 3, installed with "
    "effscale)",
    "mysqldb": "pip install mysqlclient, or write mysql+pymysql:// and pip install pymysql",
    "pymysql": "pip install pymysql",
}
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


def masked_url(url: str) -> str:
    """``url`` with its password, if any, shown as ``***`` (for messages)."""
    try:
        return str(make_url(url).render_as_string(hide_password=True))
    except Exception:  # not an RDB URL SQLAlchemy can parse: file URLs hold no password
        return url


def check_storage_file(location: StorageLocation) -> None:
    """Refuse a storage path that cannot be the file ``location`` names: a folder, or an
    existing non-empty file of another kind (an SQLite path that is not an SQLite database, a
    journal path that holds no journal, such as the study file itself). A missing or empty
    file is fine: the storage creates it. Raises :class:`.ParameterError` naming
    ``study.storage``; a server URL is not checked here (see :func:`check_rdb_driver`)."""
    path = location.path
    if path is None:
        return
    noun = "SQLite database" if location.kind == "sqlite" else "journal file"
    kind = f"an {noun}" if location.kind == "sqlite" else f"a {noun}"
    fix = f"point {location.kind}:/// at a new file name or at the study's {noun}"
    if path.is_dir():
        raise ParameterError("study.storage", f"{path} is a folder, not {kind}", fix)
    if path.parent.exists() and not path.parent.is_dir():
        raise ParameterError("study.storage", f"{path.parent} is a file, not a folder", fix)
    if path.exists() and not path.is_file():
        raise ParameterError("study.storage", f"{path} is not a regular file", fix)
    if not path.is_file() or path.stat().st_size == 0:
        return
    if location.kind == "sqlite":
        with open(path, "rb") as handle:
            head = handle.read(len(_SQLITE_MAGIC))
        if head != _SQLITE_MAGIC:
            raise ParameterError(
                "study.storage", f"{path} is not {kind} (it does not start with {head[:16]!r})", fix
            )
    elif not looks_like_journal(path):
        raise ParameterError(
            "study.storage", f"{path} is not {kind} (its first line is not an Optuna log)", fix
        )


def check_rdb_driver(url: str) -> None:
    """Refuse a server URL that SQLAlchemy cannot parse or whose Python driver is not
    installed, in one line naming the package (:class:`.ParameterError` on ``study.storage``)."""
    shown = masked_url(url)
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ParameterError(
            "study.storage",
            f"{shown} is not a database URL SQLAlchemy can use ({' '.join(str(exc).split())})",
            "write postgresql://user:password@host:5432/database",
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        driver = str(getattr(dialect, "driver", "?"))
        raise ParameterError(
            "study.storage",
            f"{shown} needs the Python driver {driver!r}, which is not installed ({exc})",
            _DRIVER_FIX.get(driver, f"install the {driver} package"),
        ) from None


def rdb_connect_args(url: str) -> dict[str, Any]:
    """A connect timeout of :data:`CONNECT_TIMEOUT_S` for PostgreSQL and MySQL drivers, unless
    the URL sets one: a host that drops packets is refused in seconds, not minutes."""
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("postgresql", "mysql") or "connect_timeout" in (
        parsed.query
    ):
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT_S}


def _open_error(location: StorageLocation, exc: BaseException) -> ParameterError:
    """A one-line :class:`.ParameterError` for a storage that could not be opened."""
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    reason = lines[0] if lines else type(original).__name__
    if location.kind == "rdb":
        fix = "check that the server runs and accepts this user, host, port and database"
    else:
        fix = "check that the folder exists, is writable and has free space"
    return ParameterError(
        "study.storage", f"cannot open {masked_url(location.url)}: {reason[:200]}", fix
    )


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
    A path of the wrong kind (:func:`check_storage_file`), a missing driver
    (:func:`check_rdb_driver`) and a database that cannot be opened (a refused port, a server
    silent for :data:`CONNECT_TIMEOUT_S`, a folder that is not writable) are refused with a
    one-line :class:`.ParameterError` naming ``study.storage``.
    """

    check_storage_file(location)
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
    else:
        check_rdb_driver(location.url)
        connect_args = rdb_connect_args(location.url)
        if connect_args:
            kwargs["engine_kwargs"] = {"connect_args": connect_args}
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
                    if isinstance(exc, SQLAlchemyError):  # the database's own answer
                        raise _open_error(location, exc) from exc
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover
