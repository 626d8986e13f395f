"""Issue #18, point 3: SIGTERM and SIGINT stop a search and its workers, in one line.

Real processes and real signals: a subprocess runs ``effscale search --workers 2`` (or 1) on a
surrogate study whose evaluations sleep 60 s (fault injection in the subprocesses only:
``tests/search_tests/slow_search.py``, which the spawned workers import too), the test waits until every worker is
inside a trial, then signals the parent (or its whole process group, as Ctrl-C in a terminal
does, or kills the parent with SIGKILL). Before issue #18 SIGTERM ended the parent alone and
both workers finished the study; SIGINT waited for every trial; Ctrl-C printed about 70 lines
of Optuna traceback.

The checks: the workers are gone within seconds (orphans 0), the interrupted trials are FAIL
with ``fail_reason = "interrupted"``, the parent prints one line and exits ``128 + signal``,
and a rerun resumes the study.

    python -m pytest tests/search_tests/test_reliability_signals.py -s   # prints the figures
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from effscale.search.cli import main
from effscale.search.runners.stopping import DeferringTrial, StopSignals, TrialInterrupted
from effscale.search.storage import WORKER_ATTR, open_storage, resolve_storage_url
from effscale.search.study_file import load_study_file

REPO = Path(__file__).resolve().parents[2]
SLEEP_S = 60.0
#: ``effscale`` whose surrogate sleeps (spawned workers too)
SLOW_SEARCH = [sys.executable, "-m", "tests.search_tests.slow_search"]
URLS = {"sqlite": "sqlite:///study.db", "journal": "journal:///study.journal"}


def _study(path: Path, url: str):
    d = load_study_file(path)
    location = resolve_storage_url(url, base_dir=d.folder)
    if location.path is not None and not location.path.exists():
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=d.study.name, storage=open_storage(location))
    except (KeyError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _start(path: Path, url: str, workers: int) -> tuple[subprocess.Popen, Path]:
    log = path.parent / "search.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                *SLOW_SEARCH,
                str(SLEEP_S),
                "search",
                str(path),
                "--quiet",
                "--workers",
                str(workers),
                "--storage",
                url,
            ],
            cwd=path.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a shell gives a job
        )
    return process, log


def _workers_in_trials(process: subprocess.Popen, log: Path, path: Path, url: str, n: int):
    """The pids of the workers once ``n`` of them are inside a (sleeping) trial."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the search ended early:\n{log.read_text()}")
        study = _study(path, url)
        if study is not None:
            running = [
                t
                for t in study.get_trials(deepcopy=False)
                if t.state.name == "RUNNING" and t.system_attrs.get(WORKER_ATTR)
            ]
            pids = {t.system_attrs[WORKER_ATTR]["pid"] for t in running}
            if len(pids) >= n:
                time.sleep(0.5)  # inside the objective's sleep
                return sorted(pids)
        time.sleep(0.2)
    raise AssertionError("the workers did not start trials within 300 s")


def _stop(process, pids, how: str) -> tuple[int | None, float, float, int]:
    """Send ``how``; returns the parent's exit code (None when killed), the seconds until the
    workers are gone and until the parent is, and the workers still alive 30 s after the
    parent exited (orphans). A single worker is the parent itself."""
    start = time.monotonic()
    if how == "SIGKILL":
        process.kill()
    elif how == "Ctrl-C":
        os.killpg(process.pid, signal.SIGINT)
    else:
        os.kill(process.pid, getattr(signal, how))
    workers = [pid for pid in pids if pid != process.pid]
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers_gone = time.monotonic() - start
    code = process.wait(timeout=120)
    parent_gone = time.monotonic() - start
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = sum(1 for pid in workers if _alive(pid))
    for pid in workers:  # never leave one behind, whatever the result
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    return (None if how == "SIGKILL" else code), workers_gone, parent_gone, orphans


@pytest.mark.slow
@pytest.mark.parametrize(
    "how, kind, workers",
    [
        ("SIGTERM", "sqlite", 2),
        ("SIGINT", "sqlite", 2),
        ("Ctrl-C", "journal", 2),
        ("SIGKILL", "journal", 2),
        ("SIGTERM", "journal", 1),
    ],
    ids=["sigterm-2-workers", "sigint-parent", "ctrl-c-group", "parent-killed", "sigterm-1"],
)
def test_a_signal_stops_the_search_and_its_workers(surrogate_study, capsys, how, kind, workers):
    url = URLS[kind]
    path = surrogate_study({"study.n_trials": "6"})
    process, log = _start(path, url, workers)
    try:
        pids = _workers_in_trials(process, log, path, url, workers)
        code, workers_gone, parent_gone, orphans = _stop(process, pids, how)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text()
    deadline = time.monotonic() + 10  # after SIGKILL the workers record their trials alone
    while True:
        trials = _study(path, url).get_trials(deepcopy=False)
        interrupted = [
            t
            for t in trials
            if t.state.name == "FAIL" and t.user_attrs.get("fail_reason") == "interrupted"
        ]
        if len(interrupted) >= workers or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    running = [t for t in trials if t.state.name == "RUNNING"]
    lines = [line for line in output.splitlines() if line.strip()]
    with capsys.disabled():
        print(
            f"\nFIGURE signals {how} ({kind}, {workers} worker(s)): workers gone after "
            f"{workers_gone:.1f} s, parent after {parent_gone:.1f} s, orphans {orphans}, "
            f"interrupted trials {len(interrupted)} FAIL "
            f"(fail_reason interrupted), left running {len(running)}, exit code {code}, "
            f"output lines {len(lines) if how != 'SIGKILL' else '-'}"
        )
    assert orphans == 0
    assert len(interrupted) == workers and not running
    assert all(t.user_attrs["error"].startswith("interrupted by SIG") for t in interrupted)
    assert "Traceback" not in output
    if how != "SIGKILL":
        signum = signal.SIGINT if how in ("SIGINT", "Ctrl-C") else getattr(signal, how)
        assert code == 128 + signum, output
        assert len(lines) == 1, output
        assert lines[0].startswith(
            f"effscale search: interrupted by {signal.Signals(signum).name}: {workers} "
            'interrupted trial(s) recorded FAIL (fail_reason "interrupted")'
        ), output
    if how == "SIGTERM" and workers == 1:  # a rerun resumes (here, fast, in this process)
        capsys.readouterr()
        assert main(["search", str(path), "--quiet", "--storage", url]) == 0
        after = _study(path, url).get_trials(deepcopy=False)
        assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in after) == 6
        assert [t.number for t in after if t.state.name == "FAIL"] == [
            t.number for t in interrupted
        ]


class _Writer:
    """A stand-in for a trial whose write is hit by a signal half-way (fault injection)."""

    def __init__(self) -> None:
        self.written: list[str] = []

    def set_user_attr(self, key: str, value: object) -> None:
        self.written.append("begun")
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100):  # Python runs the handler between bytecodes: give it many
            time.sleep(0.001)
        self.written.append("done")


def test_a_signal_during_an_objectives_storage_write_stops_it_after_the_write():
    writer = _Writer()
    with StopSignals() as signals:
        with pytest.raises(TrialInterrupted):
            with signals.interruptible():
                trial = DeferringTrial(writer, signals)
                trial.set_user_attr("macs", 1)
                writer.written.append("after")  # never reached: the stop comes first
    assert writer.written == ["begun", "done"]
    assert signals.signum == signal.SIGINT
