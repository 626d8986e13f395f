"""Where studies live: storage URLs, their defaults, the Optuna storage objects, and what keeps a
study whole when workers die (heartbeats, the stale-trial sweep, journal repair, safe paths).

URLs
----
* ``sqlite:///name.db`` is relative to the study file's folder; ``sqlite:////abs/name.db`` is
  absolute. The default is ``sqlite:///<study-file-stem>.db`` next to the study file.
* ``journal:///name.journal`` (relative) or ``journal:////abs/name.journal``: an append-only
  journal file (``JournalStorage`` over effscale's :class:`SafeJournalFileBackend`).
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

Dead workers
------------
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

Torn journals
-------------
A writer killed in the middle of an append (or a full disk) leaves a last line without its
newline; Optuna's next append glues onto it and every later ``load_study`` fails with
``JSONDecodeError`` (optuna#5138). :class:`SafeJournalFileBackend` truncates such a tail, under the
journal lock and after a ``.bak`` copy, before it appends. A corrupt line inside the file is
refused with the fix, ``effscale storage repair STUDY.toml`` (:func:`repair_journal`). The
journal lock (``JournalFileSymlinkLock``) is released by force after
:data:`JOURNAL_LOCK_GRACE_S` seconds (``EFFSCALE_JOURNAL_LOCK_GRACE``) when its owner died.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import shutil
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

__all__ = [
    "SQLITE_MAX_WORKERS",
    "SQLITE_TIMEOUT_S",
    "HEARTBEAT_INTERVAL_S",
    "GRACE_PERIOD_S",
    "JOURNAL_LOCK_GRACE_S",
    "ENV_HEARTBEAT_INTERVAL",
    "ENV_GRACE_PERIOD",
    "ENV_JOURNAL_LOCK_GRACE",
    "WORKER_ATTR",
    "HEARTBEAT_ATTR",
    "StorageLocation",
    "HeartbeatSettings",
    "heartbeat_settings",
    "heartbeat_forced",
    "default_storage_url",
    "resolve_storage_url",
    "open_storage",
    "check_workers",
    "safe_artifact_path",
    "SafeJournalFileBackend",
    "JournalCheck",
    "check_journal",
    "repair_journal",
    "worker_identity",
    "worker_alive",
    "TrialHeartbeat",
    "RetryStaleTrial",
    "StaleTrial",
    "find_stale_trials",
    "sweep_stale_trials",
    "retry_trial",
]

SQLITE_MAX_WORKERS = 8
SQLITE_TIMEOUT_S = 60
#: openings of an RDB storage tried when another process is creating the same new schema
_SCHEMA_ATTEMPTS = 5
HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 180
JOURNAL_LOCK_GRACE_S = 10

ENV_HEARTBEAT_INTERVAL = "EFFSCALE_HEARTBEAT_INTERVAL"
ENV_GRACE_PERIOD = "EFFSCALE_GRACE_PERIOD"
ENV_JOURNAL_LOCK_GRACE = "EFFSCALE_JOURNAL_LOCK_GRACE"

#: trial system attr: the worker running the trial ({"host", "pid", "token", "heartbeat"})
WORKER_ATTR = "effscale:worker"
#: trial system attr: unix time of the last heartbeat (journal storages)
HEARTBEAT_ATTR = "effscale:heartbeat"

_SCHEMES = ("sqlite", "journal", "postgresql", "postgresql+psycopg2", "postgresql+psycopg",
            "mysql", "mysql+pymysql")

_log = logging.getLogger("effscale.storage")


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


# ------------------------------------------------------------------------------ heartbeats


@dataclass(frozen=True)
class HeartbeatSettings:
    """How often a running trial proves its worker alive (``interval``, seconds) and how long a
    silent trial is waited for before it is failed and retried (``grace``, seconds)."""

    interval: int = HEARTBEAT_INTERVAL_S
    grace: int = GRACE_PERIOD_S


def _env_seconds(name: str) -> int | None:
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
    return _env_seconds(ENV_HEARTBEAT_INTERVAL) is not None


def heartbeat_settings(interval: int | None = None, grace: int | None = None) -> HeartbeatSettings:
    """The heartbeat settings: the arguments, else ``EFFSCALE_HEARTBEAT_INTERVAL`` /
    ``EFFSCALE_GRACE_PERIOD``, else 60 s and three intervals (180 s). The grace period must
    exceed the interval."""
    interval = interval if interval is not None else _env_seconds(ENV_HEARTBEAT_INTERVAL)
    interval = HEARTBEAT_INTERVAL_S if interval is None else interval
    grace = grace if grace is not None else _env_seconds(ENV_GRACE_PERIOD)
    grace = 3 * interval if grace is None else grace
    for name, value in (("heartbeat interval", interval), ("grace period", grace)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: must be a whole number of seconds >= 1, got {value!r}")
    if grace <= interval:
        raise ValueError(f"grace period: {grace} s must exceed the heartbeat interval "
                         f"({interval} s), or live trials are failed; use {3 * interval}")
    return HeartbeatSettings(interval=interval, grace=grace)


def _journal_lock_grace() -> int:
    value = _env_seconds(ENV_JOURNAL_LOCK_GRACE)
    return JOURNAL_LOCK_GRACE_S if value is None else value


# ------------------------------------------------------------------------------ opening


def open_storage(location: StorageLocation, *,
                 heartbeat: bool | HeartbeatSettings = False) -> Any:
    """The Optuna storage object for ``location``.

    SQLite gets a ``timeout`` of :data:`SQLITE_TIMEOUT_S` seconds for its lock. With
    ``heartbeat`` (``True``: :func:`heartbeat_settings`), RDB storages (SQLite included) record
    Optuna's heartbeat every interval and retry a stale trial once (:class:`RetryStaleTrial`).
    Journal files use :class:`SafeJournalFileBackend` with a lock released by force after
    :data:`JOURNAL_LOCK_GRACE_S`; a journal with a corrupt line is refused with the fix.
    """
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import JournalStorage, RDBStorage

    if location.kind == "journal":
        assert location.path is not None
        location.path.parent.mkdir(parents=True, exist_ok=True)
        backend = _lazy("SafeJournalFileBackend")(str(location.path))
        try:
            return JournalStorage(backend)
        except ValueError as exc:  # JSONDecodeError or "Invalid log format." while replaying
            report = check_journal(location.path)
            if report.ok:
                raise
            raise ValueError(f"study.storage: {report.describe()}; run `effscale storage repair "
                             f"STUDY.toml` (it keeps a .bak copy)") from exc
    kwargs: dict[str, Any] = {}
    if location.kind == "sqlite":
        assert location.path is not None
        location.path.parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    with warnings.catch_warnings():  # the heartbeat API is marked experimental in Optuna 5.0
        warnings.simplefilter("ignore", ExperimentalWarning)
        if heartbeat:
            settings = heartbeat if isinstance(heartbeat, HeartbeatSettings) \
                else heartbeat_settings()
            kwargs.update(
                heartbeat_interval=settings.interval,
                grace_period=settings.grace,
                heartbeat_stale_trial_callback=_lazy("RetryStaleTrial")(max_retry=1),
            )
        for attempt in range(_SCHEMA_ATTEMPTS):
            try:
                return RDBStorage(location.url, **kwargs)
            except Exception as exc:  # sqlalchemy's OperationalError, by message
                # Two processes opening a new database at once (a search and `effscale status`,
                # or two workers) both create the schema; the slower one finds a table that the
                # other has just made. The schema is there now: opening again succeeds.
                if "already exists" not in str(exc) or attempt == _SCHEMA_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover


# ------------------------------------------------------------------------------ artifacts


def safe_artifact_path(root: str | Path, name: str | Path) -> Path:
    """``root / name`` resolved, refusing any ``name`` that could leave ``root``: absolute paths
    (POSIX or Windows, drive letters, UNC), ``..`` components, empty names, NUL bytes, and
    symbolic links inside ``root`` that point outside it. Raises ``ValueError`` naming the
    artifact."""
    text = str(name)
    if not text or not text.strip() or "\x00" in text:
        raise ValueError(f"artifact name {text!r}: empty or not a plain path; use a relative "
                         "name such as \"best/config.json\"")
    posix, windows = PurePosixPath(text), PureWindowsPath(text)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root \
            or text.startswith(("/", "\\", "~")):
        raise ValueError(f"artifact name {text!r}: absolute paths are not allowed; use a name "
                         "relative to the output folder")
    if ".." in posix.parts or ".." in windows.parts:
        raise ValueError(f"artifact name {text!r}: '..' would leave the output folder; use a "
                         "name inside it")
    base = Path(root).resolve()
    target = (base / posix).resolve()
    if target != base and base not in target.parents:
        raise ValueError(f"artifact name {text!r}: resolves to {target}, outside {base} (a "
                         "symbolic link?); use a name inside the output folder")
    if target == base:
        raise ValueError(f"artifact name {text!r}: names the output folder itself; give a "
                         "file name")
    return target


# ------------------------------------------------------------------------------ journal files


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _backup(path: Path) -> Path:
    """Copy ``path`` to ``path.bak`` (``.bak.1``, ``.bak.2``, .. when taken); returns the copy."""
    backup = path.with_name(path.name + ".bak")
    index = 0
    while backup.exists():
        index += 1
        backup = path.with_name(f"{path.name}.bak.{index}")
    shutil.copy2(path, backup)
    return backup


def _rfind_newline(handle: Any, before: int) -> int:
    """Offset just after the last newline in ``handle[:before]`` (0 when there is none)."""
    position = before
    while position > 0:
        step = min(65536, position)
        handle.seek(position - step)
        index = handle.read(step).rfind(b"\n")
        if index >= 0:
            return position - step + index + 1
        position -= step
    return 0


def _mend_tail(path: Path) -> tuple[int, Path | None]:
    """Make the end of a journal safe to append to: drop an unterminated last line (a write cut
    short), and replace a complete last line that is not a log (a later write glued onto a torn
    one) by the whole log it ends with, if any. Runs under the journal lock, after a ``.bak``
    copy; returns (bytes dropped, the copy). Readers never went past a line they could not
    parse, so rewriting the last line does not shift anything they have read."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        end = _rfind_newline(handle, size)  # just after the last complete line
        start = _rfind_newline(handle, end - 1) if end else 0
        handle.seek(start)
        last = handle.read(end - start)[:-1] if end else b""
    glued = bool(last) and not _parse_log(last)
    if end == size and not glued:
        return 0, None
    keep, tail = end, b""
    if glued:
        recovered = _recover(last)
        keep, tail = start, (recovered + b"\n" if recovered is not None else b"")
    backup = _backup(path)
    with open(path, "r+b") as handle:
        handle.truncate(keep)
        handle.seek(keep)
        handle.write(tail)
        handle.flush()
        os.fsync(handle.fileno())
    dropped = size - keep - len(tail)
    _log.warning("effscale: %s ended in %s (%d bytes dropped%s); the file as it was is in %s",
                 path, "a line glued onto a torn write" if glued else "a torn line (a write "
                 "cut short)", dropped, ", the whole log at its end kept" if tail else "", backup)
    return dropped, backup


def _make_safe_journal_backend() -> type:
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
    from optuna.storages.journal._file import get_lock_file

    class SafeJournalFileBackend(JournalFileBackend):
        """Optuna's ``JournalFileBackend`` whose appends first cut a torn last line.

        Under the journal lock no other writer is mid-append, so a last line without its
        newline is the remains of a writer that died (or of a full disk): the file is copied to
        ``<journal>.bak`` and the line truncated, then the new logs are appended. A complete
        last line that is not a log (another program's append glued onto a torn line) is
        replaced by the whole log it ends with. Without this, the append glues onto the torn
        line and every later read fails (optuna#5138). The lock
        is Optuna's ``JournalFileSymlinkLock`` with a grace period (:data:`JOURNAL_LOCK_GRACE_S`,
        ``EFFSCALE_JOURNAL_LOCK_GRACE``) after which a lock left by a killed writer is released
        by force.
        """

        def __init__(self, file_path: str, lock_obj: Any = None) -> None:
            if lock_obj is None:
                with warnings.catch_warnings():  # Optuna warns about a grace below 3 s
                    warnings.simplefilter("ignore")
                    lock_obj = JournalFileSymlinkLock(file_path,
                                                      grace_period=_journal_lock_grace())
            super().__init__(file_path, lock_obj=lock_obj)

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            with get_lock_file(self._lock):
                _mend_tail(Path(self._file_path))
                text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs)
                with open(self._file_path, "ab") as handle:
                    handle.write((text + "\n").encode("utf-8"))
                    handle.flush()
                    os.fsync(handle.fileno())

    SafeJournalFileBackend.__module__ = __name__
    SafeJournalFileBackend.__qualname__ = "SafeJournalFileBackend"
    return SafeJournalFileBackend


@dataclass
class JournalCheck:
    """What :func:`check_journal` found in a journal file: its ``size`` in bytes, the number of
    good ``logs``, the byte count of a ``torn_tail`` (a last line without newline), the 1-based
    numbers of ``bad_lines`` (complete lines that are not a JSON object) and of those
    ``recoverable`` ones that end in a whole log (a log appended onto a torn line), and whether
    a lock file is present (``lock_age_s``: its age, ``None`` when absent)."""

    path: Path
    size: int = 0
    logs: int = 0
    torn_tail: int = 0
    bad_lines: list[int] = field(default_factory=list)
    recoverable: list[int] = field(default_factory=list)
    lock_age_s: float | None = None

    @property
    def ok(self) -> bool:
        """No torn tail and no bad line."""
        return not self.torn_tail and not self.bad_lines

    def describe(self) -> str:
        """One line: the state of the file."""
        if self.ok:
            text = f"{self.path}: {self.logs} logs, no torn or corrupt line"
        else:
            problems = []
            if self.bad_lines:
                lines = ", ".join(map(str, self.bad_lines[:5]))
                more = f" (+{len(self.bad_lines) - 5} more)" if len(self.bad_lines) > 5 else ""
                problems.append(f"corrupt line{'s' if len(self.bad_lines) > 1 else ''} "
                                f"{lines}{more} (a torn write that a later append glued onto, "
                                f"optuna#5138; {len(self.recoverable)} end in a whole log)")
            if self.torn_tail:
                problems.append(f"a torn last line of {self.torn_tail} bytes (a write cut "
                                "short)")
            text = f"{self.path}: {self.logs} good logs, " + " and ".join(problems)
        if self.lock_age_s is not None:
            text += f"; lock file present for {self.lock_age_s:.0f} s"
        return text


_LOG_START = b'{"op_code"'


def _parse_log(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def _recover(line: bytes) -> bytes | None:
    """The whole log at the end of a glued line (``<torn part><log>``), or ``None``."""
    start = line.find(_LOG_START, 1)
    while start > 0:
        if _parse_log(line[start:]):
            return line[start:]
        start = line.find(_LOG_START, start + 1)
    return None


def _scan(path: Path) -> tuple[JournalCheck, list[bytes]]:
    report = JournalCheck(path=path)
    kept: list[bytes] = []
    data = path.read_bytes()
    report.size = len(data)
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: b"" when the file ends whole
    report.torn_tail = len(tail)
    for number, line in enumerate(lines, start=1):
        if _parse_log(line):
            kept.append(line)
            report.logs += 1
            continue
        report.bad_lines.append(number)
        recovered = _recover(line)
        if recovered is not None:
            report.recoverable.append(number)
            kept.append(recovered)
    lock = path.with_name(path.name + ".lock")
    try:
        report.lock_age_s = max(0.0, time.time() - os.lstat(lock).st_mtime)
    except OSError:
        report.lock_age_s = None
    return report, kept


def check_journal(path: str | Path) -> JournalCheck:
    """Read a journal file and report torn or corrupt lines (nothing is written)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no journal file: {path}")
    return _scan(path)[0]


def repair_journal(path: str | Path) -> tuple[JournalCheck, Path | None]:
    """Rewrite a journal without its torn tail and corrupt lines, keeping the whole logs that
    were glued onto torn ones. The file as it was goes to ``<journal>.bak`` first; the new one
    replaces it atomically (temp file, fsync, rename) under the journal lock. Run it while no
    worker writes (a stopped search). Returns the report from before and the backup (``None``
    when there was nothing to repair)."""
    from optuna.storages.journal._file import get_lock_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no journal file: {path}")
    backend = _lazy("SafeJournalFileBackend")(str(path))
    with get_lock_file(backend._lock):
        report, kept = _scan(path)
        report.lock_age_s = None  # the lock is ours now
        if report.ok:
            return report, None
        backup = _backup(path)
        tmp = path.with_name(f".{path.name}.repair.tmp")
        with open(tmp, "wb") as handle:
            handle.write(b"".join(line + b"\n" for line in kept))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    return report, backup


# ------------------------------------------------------------------------------ workers


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
        fields = text[text.rfind(")") + 2:].split()
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
    return {"host": _HOST, "pid": pid, "token": _process_token(pid),
            "heartbeat": heartbeat_interval}


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
        self._thread = threading.Thread(target=self._run, name="effscale-heartbeat",
                                        daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
            except Exception:  # the trial finished meanwhile, or the storage is gone: stop
                return

    def __enter__(self) -> "TrialHeartbeat":
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
    from optuna.storages._heartbeat import is_heartbeat_enabled

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


def find_stale_trials(study: Any, settings: HeartbeatSettings | None = None, *,
                      now: float | None = None) -> list[StaleTrial]:
    """The RUNNING trials of ``study`` whose worker is gone (see the module docstring).

    A trial is stale when its worker process no longer runs (same host), when Optuna's RDB
    heartbeat of it is older than the storage's grace period, when effscale's journal heartbeat
    (or, without one, its start) is older than ``settings.grace``, or when it never recorded a
    worker and started more than ``settings.grace`` ago (a worker killed before its first
    write). A trial whose worker runs on another host without any heartbeat cannot be judged
    and is left alone."""
    from optuna.trial import TrialState

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
            stale.append(StaleTrial(trial.number, trial._trial_id,
                                    f"worker process {identity['pid']} on {identity['host']} "
                                    "died during the trial"))
            continue
        if rdb_stale is not None and trial._trial_id in rdb_stale:
            stale.append(StaleTrial(trial.number, trial._trial_id,
                                    "no heartbeat within the grace period of "
                                    f"{_rdb_grace(study._storage)} s"))
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
            stale.append(StaleTrial(trial.number, trial._trial_id,
                                    f"no heartbeat for {now - last:.0f} s (grace "
                                    f"{settings.grace} s)"))
    return stale


def retry_trial(study: Any, trial: Any, reason: str) -> int | None:
    """Enqueue ``trial`` once more with the same params and ``retry_of``/``retry_reason``
    user attrs; a retry is never retried again. Returns the number of the retry's original
    trial, or ``None`` when no retry was made."""
    if trial.user_attrs.get("retry_of") is not None:
        return None
    if not trial.params:
        return None  # killed before it sampled anything: a fresh trial does the same
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number,
                                                        "retry_reason": reason})
    return trial.number


def sweep_stale_trials(study: Any, settings: HeartbeatSettings | None = None, *,
                       retry: bool = True, now: float | None = None) -> list[StaleTrial]:
    """Fail every stale trial (:func:`find_stale_trials`) with ``fail_reason = "worker_lost"``
    and an ``error`` line, then retry it once (:func:`retry_trial`). Safe to run from several
    processes at once: only the one that fails a trial retries it. Returns the trials failed."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

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


def _make_retry_callback() -> type:
    from optuna.storages import RetryHeartbeatStaleTrialCallback

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

    RetryStaleTrial.__module__ = __name__
    RetryStaleTrial.__qualname__ = "RetryStaleTrial"
    return RetryStaleTrial


_LAZY = {"SafeJournalFileBackend": _make_safe_journal_backend,
         "RetryStaleTrial": _make_retry_callback}


def _lazy(name: str) -> Any:
    if name not in globals():
        globals()[name] = _LAZY[name]()
    return globals()[name]


def __getattr__(name: str) -> Any:
    """``SafeJournalFileBackend`` and ``RetryStaleTrial`` subclass Optuna classes; they are made
    on first use so that importing this module (every command does) does not import Optuna."""
    if name in _LAZY:
        return _lazy(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
