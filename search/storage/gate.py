"""One study, many processes: the lock around starting a trial, and the run tokens that give
concurrent runs distinct sampler seeds.

Starting a trial is "count the trials that hold a place (finished and running), and if there is
room, create the next one". Two ``effscale search`` processes on one storage that do this at the
same time both see room for the last trial and both create it (issue 18: 21 trials for 20).
:class:`TrialGate` makes the count and the creation one step across processes:

* SQLite and journal files: a POSIX record lock (``fcntl.lockf``) on ``<storage>.start.lock``
  next to the storage file. The kernel releases it when its process dies, so a killed worker
  never leaves it held; it also works over NFS with a lock manager, as the journal does;
* PostgreSQL: a session advisory lock (``pg_advisory_lock``) keyed by the study name, on a
  connection of its own; MySQL: ``GET_LOCK``. Both are released by the server when the
  connection drops;
* other servers: no lock (a race can then start one trial too many).

A run registers itself in the study's system attrs (``effscale:run:<token>``: host, pid,
process start, time). :func:`register_run` says whether another run of the study is alive:
then this run mixes its token into its sampler seeds, so that two processes started together
never draw the same points (the same seed makes the same random start-up trials); a run alone
keeps the reproducible seeds. :func:`finish_run` marks the run finished.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy.pool import NullPool

from .liveness import worker_alive, worker_identity
from .urls import StorageLocation, rdb_connect_args

__all__ = [
    "RUN_ATTR_PREFIX",
    "START_LOCK_SUFFIX",
    "RunToken",
    "TrialGate",
    "register_run",
    "finish_run",
    "live_runs",
]

#: study system attr prefix of the runs that worked on a study
RUN_ATTR_PREFIX = "effscale:run:"
#: the lock file next to a storage file: ``<storage><suffix>``
START_LOCK_SUFFIX = ".start.lock"


@dataclass(frozen=True)
class RunToken:
    """This run's ``key`` in the study's system attrs and whether another run of the study was
    alive when it registered (``concurrent``); ``salt`` is the integer mixed into the seeds of
    a concurrent run."""

    key: str
    concurrent: bool

    @property
    def salt(self) -> int | None:
        """The seed salt of a concurrent run (``None`` for a run alone)."""
        return int(self.key[:8], 16) if self.concurrent else None


def _is_live(record: Any) -> bool:
    if not isinstance(record, dict) or record.get("finished"):
        return False
    return worker_alive(record) is not False  # another host: cannot tell, so assume it runs


def live_runs(study: Any, *, exclude: str | None = None) -> list[str]:
    """The keys of the runs of ``study`` that are registered, not finished and, on this host,
    still running (runs on other hosts count as running)."""
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return [
        key[len(RUN_ATTR_PREFIX) :]
        for key, record in attrs.items()
        if key.startswith(RUN_ATTR_PREFIX)
        and key[len(RUN_ATTR_PREFIX) :] != exclude
        and _is_live(record)
    ]


def register_run(study: Any) -> RunToken:
    """Record this process as a run of ``study`` and return its token; ``concurrent`` when
    another live run is registered. Write first, then read: of two runs registering at once,
    at least the later one sees the other, so their seeds differ."""
    key = uuid.uuid4().hex
    record = {**worker_identity(None), "started": time.time(), "finished": False}
    study._storage.set_study_system_attr(study._study_id, RUN_ATTR_PREFIX + key, record)
    return RunToken(key=key, concurrent=bool(live_runs(study, exclude=key)))


def finish_run(study: Any, token: RunToken) -> None:
    """Mark the run of ``token`` finished (best effort: a full disk or a lost server leaves it
    registered, and then its process, gone, no longer counts as alive on this host)."""
    name = RUN_ATTR_PREFIX + token.key
    try:
        record = dict(study._storage.get_study_system_attrs(study._study_id).get(name) or {})
        record["finished"] = True
        study._storage.set_study_system_attr(study._study_id, name, record)
    except Exception:  # the run is over either way
        pass


def _lock_key(study_name: str) -> int:
    return int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)


class TrialGate:
    """A lock across processes around "count the trials, then create one" in the study named
    ``study_name`` at ``location`` (see the module docstring). Use ``with gate:``; the lock is
    opened on first use and held only inside the block."""

    def __init__(self, location: StorageLocation, study_name: str) -> None:
        self.location = location
        self.study_name = study_name
        self._fd: int | None = None
        self._connection: Any = None
        self._dialect: str | None = None

    @property
    def lock_path(self) -> Path | None:
        """The lock file of a file storage (``None`` for a server)."""
        path = self.location.path
        return None if path is None else path.with_name(path.name + START_LOCK_SUFFIX)

    def _open(self) -> None:
        lock_path = self.lock_path
        if lock_path is not None:
            if self._fd is None:
                self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            return
        if self._connection is None:
            engine = sqlalchemy.create_engine(
                self.location.url,
                poolclass=NullPool,
                connect_args=rdb_connect_args(self.location.url),
            )
            self._dialect = engine.dialect.name
            self._connection = engine.connect()

    def _execute(self, sql: str) -> None:
        key = _lock_key(self.study_name)
        name = f"effscale-{key & 0xFFFFFFFFFFFF:x}"
        self._connection.execute(sqlalchemy.text(sql), {"key": key, "name": name})
        self._connection.commit()  # the session lock outlives the transaction

    def __enter__(self) -> TrialGate:
        self._open()
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
        elif self._dialect == "postgresql":
            self._execute("SELECT pg_advisory_lock(:key)")
        elif self._dialect == "mysql":
            self._execute("SELECT GET_LOCK(:name, -1)")
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._fd is not None:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
            elif self._dialect == "postgresql":
                self._execute("SELECT pg_advisory_unlock(:key)")
            elif self._dialect == "mysql":
                self._execute("SELECT RELEASE_LOCK(:name)")
        except Exception:  # a lost connection has released the lock already
            pass

    def close(self) -> None:
        """Close the lock file or the lock's connection."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # closing a dropped connection
                pass
            self._connection = None
