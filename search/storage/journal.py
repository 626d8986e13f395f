"""Journal files that survive killed writers: torn-tail mending on append, checks and repair.

A writer killed in the middle of an append (or a full disk) leaves a last line without its
newline; Optuna's next append glues onto it and every later ``load_study`` fails with
``JSONDecodeError`` (optuna#5138). :class:`SafeJournalFileBackend` truncates such a tail, under the
journal lock and after a ``.bak`` copy, before it appends. A corrupt line inside the file is
refused with the fix, ``effscale storage repair STUDY.toml`` (:func:`repair_journal`). The
journal lock (``JournalFileSymlinkLock``) is released by force after
:data:`JOURNAL_LOCK_GRACE_S` seconds (``EFFSCALE_JOURNAL_LOCK_GRACE``) when its owner died.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.storages.journal._file import get_lock_file

from .liveness import env_seconds

__all__ = [
    "JOURNAL_LOCK_GRACE_S",
    "ENV_JOURNAL_LOCK_GRACE",
    "SafeJournalFileBackend",
    "JournalCheck",
    "looks_like_journal",
    "check_journal",
    "repair_journal",
]

JOURNAL_LOCK_GRACE_S = 10
ENV_JOURNAL_LOCK_GRACE = "EFFSCALE_JOURNAL_LOCK_GRACE"

_log = logging.getLogger("effscale.storage")


def _journal_lock_grace() -> int:
    value = env_seconds(ENV_JOURNAL_LOCK_GRACE)
    return JOURNAL_LOCK_GRACE_S if value is None else value


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
    try:
        shutil.copy2(path, backup)
    except BaseException:  # a full disk: no half copy is left behind, the journal is untouched
        backup.unlink(missing_ok=True)
        raise
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
    _log.warning(
        "effscale: %s ended in %s (%d bytes dropped%s); the file as it was is in %s",
        path,
        "a line glued onto a torn write" if glued else "a torn line (a write cut short)",
        dropped,
        ", the whole log at its end kept" if tail else "",
        backup,
    )
    return dropped, backup


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
                lock_obj = JournalFileSymlinkLock(file_path, grace_period=_journal_lock_grace())
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
                problems.append(
                    f"corrupt line{'s' if len(self.bad_lines) > 1 else ''} "
                    f"{lines}{more} (a torn write that a later append glued onto, "
                    f"optuna#5138; {len(self.recoverable)} end in a whole log)"
                )
            if self.torn_tail:
                problems.append(f"a torn last line of {self.torn_tail} bytes (a write cut short)")
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


def looks_like_journal(path: str | Path) -> bool:
    """Whether ``path`` is an empty file or one whose first line (complete or torn) starts an
    Optuna journal log (``{"op_code"``): not, say, a study file or an SQLite database given
    as a journal."""
    with open(path, "rb") as handle:
        head = handle.read(65536)
    if not head:
        return True
    first = head.split(b"\n", 1)[0]
    return first.startswith(_LOG_START) or _parse_log(first)


def _require_journal(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"no journal file: {path}")
    if not looks_like_journal(path):
        raise ValueError(
            f"study.storage: {path} is not a journal file (its first line is not an Optuna "
            "log); nothing was changed; give the journal:/// URL of the study's journal"
        )


def check_journal(path: str | Path) -> JournalCheck:
    """Read a journal file and report torn or corrupt lines (nothing is written). A file that
    is not a journal (:func:`looks_like_journal`) is refused with ``ValueError``."""
    path = Path(path)
    _require_journal(path)
    return _scan(path)[0]


def repair_journal(path: str | Path) -> tuple[JournalCheck, Path | None]:
    """Rewrite a journal without its torn tail and corrupt lines, keeping the whole logs that
    were glued onto torn ones. The file as it was goes to ``<journal>.bak`` first; the new one
    replaces it atomically (temp file, fsync, rename) under the journal lock. Run it while no
    worker writes (a stopped search). Returns the report from before and the backup (``None``
    when there was nothing to repair). A file that is not a journal is refused untouched."""

    path = Path(path)
    _require_journal(path)
    backend = SafeJournalFileBackend(str(path))
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
