"""Why a run stops before its end, and how: a signal (SIGINT, SIGTERM) or a full disk.

Signals. :class:`StopSignals` replaces the SIGINT and SIGTERM handlers while trials run. A
signal that arrives while the objective runs (:meth:`StopSignals.interruptible`) raises
:class:`TrialInterrupted` at once, so that a training stops within a step; one that arrives while
the worker writes to the storage (asking for a trial, telling its result, or a write the objective
makes through its trial, :class:`DeferringTrial`) is only recorded and acted on after the write,
so no write is cut in half. Further signals are ignored while the run
stops. The interrupted trial is told FAIL with ``fail_reason = "interrupted"``.

Worker processes die with their parent: :func:`die_with_parent` asks Linux for SIGTERM when the
parent goes (``PR_SET_PDEATHSIG``), even when the parent is killed with SIGKILL, so that no
worker is left running a study nobody watches.

Disk full. :func:`is_disk_full` recognizes ``ENOSPC`` (and ``EDQUOT``) anywhere in an exception's
chain, SQLite's "database or disk is full" and a server's "No space left on device". The trial
is told FAIL with ``fail_reason = "disk_full"`` when the storage still takes the write, and the
run stops (:class:`DiskFullError`): every later trial would fail the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = [
    "INTERRUPTED",
    "DISK_FULL",
    "EXIT_INTERRUPTED",
    "EXIT_DISK_FULL",
    "TrialInterrupted",
    "DiskFullError",
    "StopSignals",
    "DeferringTrial",
    "signal_name",
    "die_with_parent",
    "ignore_sigint",
    "is_disk_full",
    "disk_full_reason",
]

#: ``fail_reason`` of a trial stopped by a signal
INTERRUPTED = "interrupted"
#: ``fail_reason`` of a trial that could not write because the disk is full
DISK_FULL = "disk_full"
#: exit code of a worker process that stopped on a signal
EXIT_INTERRUPTED = 130
#: exit code of a worker process that stopped on a full disk (``ENOSPC`` is 28)
EXIT_DISK_FULL = 28

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_FULL_MESSAGES = ("database or disk is full", "no space left on device", "disk full")


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class TrialInterrupted(KeyboardInterrupt):
    """Raised in the main thread by :class:`StopSignals` when a signal stops the run; a
    ``KeyboardInterrupt``, so that ``except Exception`` in the objective lets it through."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal_name(signum)}")


class DiskFullError(Exception):
    """A trial (or the storage) could not write because the disk is full; the run stops.
    ``number`` is the trial's number (``None`` before one was created) and ``recorded``
    whether its FAIL with ``fail_reason = "disk_full"`` reached the storage."""

    def __init__(self, message: str, *, number: int | None = None, recorded: bool = False) -> None:
        self.number = number
        self.recorded = recorded
        super().__init__(message)


class StopSignals:
    """SIGINT and SIGTERM handlers that stop a run between storage writes (see the module
    docstring). ``signum`` is the first signal received (``None`` until one arrives). Use as a
    context manager; outside the main thread (where Python cannot install handlers) it
    installs nothing and the signals keep their handlers."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._interruptible = False
        self._saved: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal asked the run to stop."""
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            return  # already stopping: a second Ctrl-C must not cut the FAIL being written
        self.signum = signum
        if self._interruptible:
            self._interruptible = False
            raise TrialInterrupted(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Within the block a signal is only recorded, even inside :meth:`interruptible`: a
        storage write that the objective makes (a user attr, a report) is never cut in half, so
        no journal lock is left held and no transaction half done. Inside
        :meth:`interruptible`, a signal received within the block raises
        :class:`TrialInterrupted` when the block ends."""
        was = self._interruptible
        self._interruptible = False
        try:
            yield
        finally:
            self._interruptible = was
        if was and self.signum is not None:
            self._interruptible = False
            raise TrialInterrupted(self.signum)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Within the block a signal raises :class:`TrialInterrupted` at once (one received
        before the block raises on entry)."""
        if self.signum is not None:
            raise TrialInterrupted(self.signum)
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False


class DeferringTrial:
    """An Optuna trial handed to the objective inside :meth:`StopSignals.interruptible`: each
    of its method calls (``set_user_attr``, ``report``, ``suggest_float``, ...) runs under
    :meth:`StopSignals.deferred`, so that a signal stops the objective between its storage
    writes, never within one. Attributes (``number``, ``params``, ``study``) are the trial's."""

    def __init__(self, trial: Any, signals: StopSignals) -> None:
        self._trial = trial
        self._signals = signals

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._trial, name)
        if not callable(value):
            return value
        signals = self._signals

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            with signals.deferred():
                return value(*args, **kwargs)

        return call


@contextlib.contextmanager
def ignore_sigint() -> Iterator[None]:
    """Ignore SIGINT within the block (main thread only). Worker processes started inside it
    inherit the ignored SIGINT through ``exec`` until they install :class:`StopSignals`, so a
    Ctrl-C during their start-up (importing torch takes seconds) cannot print a traceback; the
    parent stops them with SIGTERM instead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def die_with_parent(parent_pid: int) -> None:
    """Have Linux send this process SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), and
    exit now if the parent ``parent_pid`` is already gone. Elsewhere: nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        return
    if os.getppid() != parent_pid:
        raise SystemExit(EXIT_INTERRUPTED)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        for linked in (item.__cause__, item.__context__, getattr(item, "orig", None)):
            if isinstance(linked, BaseException):
                stack.append(linked)


def _full(item: BaseException) -> bool:
    if isinstance(item, DiskFullError):
        return True
    if isinstance(item, OSError) and item.errno in _FULL_ERRNOS:
        return True
    text = str(item).lower()
    return any(message in text for message in _FULL_MESSAGES)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk or quota is full."""
    return any(_full(item) for item in _chain(exc))


def disk_full_reason(exc: BaseException) -> str:
    """The words of the exception in ``exc``'s chain that says the disk is full (storages wrap
    it in messages of their own), one line."""
    found = [
        f"{type(item).__name__}: {' '.join(str(item).split())}"
        for item in _chain(exc)
        if _full(item) and not isinstance(item, DiskFullError)
    ]
    if not found:
        return " ".join(str(exc).split())[:200] or type(exc).__name__
    return min(found, key=len)[:200]  # the driver's own words, not a wrapper's SQL dump
