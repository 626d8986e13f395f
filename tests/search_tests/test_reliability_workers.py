"""Issue #8, point 1: a worker killed with SIGKILL in the middle of a trial loses nothing.

A subprocess runs ``effscale search`` on a surrogate study whose objective sleeps (fault
injection in the subprocess only), and is killed while a trial runs. The rerun finds the trial
of the dead worker, fails it with a reason and retries it once with the same params; every trial
finished before the kill is still there and the study reaches its trial count.

Three ways to find the dead worker: its process is gone (same host, at once), Optuna's RDB
heartbeat (SQLite) or effscale's journal heartbeat is older than the grace period (the rerun
pretends to run on another host, where the process cannot be looked up).

    python -m pytest tests/search_tests/test_reliability_workers.py -s   # prints the figures
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

import effscale.search.storage.liveness
from effscale.search.cli import main
from effscale.search.storage import (
    HEARTBEAT_ATTR,
    WORKER_ATTR,
    HeartbeatSettings,
    find_stale_trials,
    open_storage,
    resolve_storage_url,
    sweep_stale_trials,
    worker_identity,
)
from effscale.search.study_file import load_study_file

REPO = Path(__file__).resolve().parents[2]
BEAT = HeartbeatSettings(interval=1, grace=3)
DELAY_S = 1.0  # per surrogate evaluation in the killed search
#: ``effscale`` whose surrogate sleeps per evaluation (spawned workers too; ``slow_search.py``)
SLOW_SEARCH = [sys.executable, "-m", "tests.search_tests.slow_search"]
URLS = {"sqlite": "sqlite:///study.db", "journal": "journal:///study.journal"}


def _load(path: Path, url: str, heartbeat: bool = False):
    d = load_study_file(path)
    location = resolve_storage_url(url, base_dir=d.folder)
    if location.path is not None and not location.path.exists():
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(
            study_name=d.study.name,
            storage=open_storage(location, heartbeat=BEAT if heartbeat else False),
        )
    except KeyError:
        return None


def _wait(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _heartbeat_env(monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("EFFSCALE_HEARTBEAT_INTERVAL", str(BEAT.interval))
    monkeypatch.setenv("EFFSCALE_GRACE_PERIOD", str(BEAT.grace))
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }


def _kill_mid_trial(path: Path, url: str, env: dict[str, str], log: Path):
    """Start the slow search, kill -9 it while a trial runs after >= 3 finished ones; returns
    the study as the kill left it."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                *SLOW_SEARCH,
                str(DELAY_S),
                "search",
                str(path),
                "--quiet",
                "--storage",
                url,
            ],
            cwd=path.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def mid_trial():
            if process.poll() is not None:
                raise AssertionError(f"the search ended before the kill:\n{log.read_text()}")
            study = _load(path, url)
            if study is None:
                return None
            trials = study.get_trials(deepcopy=False)
            finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
            # feasible: inside the sleeping surrogate; young: it sleeps on after the kill
            running = [
                t
                for t in trials
                if t.state.name == "RUNNING"
                and t.user_attrs.get("feasible") is True
                and time.time() - t.datetime_start.timestamp() < DELAY_S / 2
            ]
            return len(finished) >= 3 and running

        _wait(mid_trial, 180, "3 finished trials and one running", poll=0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return _load(path, url)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, where", [("sqlite", "same host"), ("sqlite", "other host"), ("journal", "other host")]
)
def test_a_killed_worker_loses_no_trial(surrogate_study, monkeypatch, capsys, kind, where):
    url = URLS[kind]
    path = surrogate_study({"study.n_trials": "8"})
    env = _heartbeat_env(monkeypatch)
    start = time.monotonic()
    killed_study = _kill_mid_trial(path, url, env, path.parent / "search.log")
    before = {t.number: t for t in killed_study.get_trials(deepcopy=False)}
    killed = [t for t in before.values() if t.state.name == "RUNNING"]
    finished = {n: t for n, t in before.items() if t.state.name in ("COMPLETE", "PRUNED")}
    assert len(killed) == 1 and len(finished) >= 3

    if where == "other host":  # the dead process cannot be looked up: only the heartbeat tells
        monkeypatch.setattr(effscale.search.storage.liveness, "_HOST", "another-host")
        waited = time.monotonic()
        _wait(
            lambda: find_stale_trials(_load(path, url, heartbeat=True), BEAT),
            30,
            "the heartbeat to go stale",
        )
        waited = time.monotonic() - waited
    else:
        waited = 0.0

    assert main(["search", str(path), "--quiet", "--storage", url]) == 0
    capsys.readouterr()
    trials = {t.number: t for t in _load(path, url).get_trials(deepcopy=False)}

    for number, old in finished.items():  # every trial finished before the kill is unchanged
        new = trials[number]
        assert (new.state, new.values, new.params) == (old.state, old.values, old.params)
    dead = trials[killed[0].number]
    assert dead.state.name == "FAIL" and dead.user_attrs["fail_reason"] == "worker_lost"
    assert dead.user_attrs["error"].startswith("worker lost: ")
    retries = [t for t in trials.values() if t.user_attrs.get("retry_of") == dead.number]
    assert len(retries) == 1 and retries[0].params == dead.params
    assert retries[0].state.name in ("COMPLETE", "PRUNED")
    states = [t.state.name for t in trials.values()]
    assert states.count("COMPLETE") + states.count("PRUNED") == 8
    assert set(states) <= {"COMPLETE", "PRUNED", "FAIL"} and states.count("FAIL") == 1
    lost = len(finished) - sum(1 for n in finished if n in trials)
    with capsys.disabled():
        print(
            f"\nFIGURE killed worker ({kind}, found via {where}): {len(finished)} trials "
            f"finished before kill -9, trials lost = {lost}, killed trial #{dead.number} "
            f"FAIL ({dead.user_attrs['error']}), retried as #{retries[0].number} "
            f"({retries[0].state.name}); waited {waited:.1f} s for the grace period; "
            f"{time.monotonic() - start:.1f} s in all"
        )
    assert lost == 0


# ------------------------------------------------------------------------------------ unit level


def _running_trial(study, identity, *, beat: float | None = None):
    trial = study.ask()
    trial.suggest_float("alpha", 1.0, 1.6)
    if identity is not None:
        study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, identity)
    if beat is not None:
        study._storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, beat)
    return trial


def test_the_sweep_never_fails_a_live_trial_and_retries_once(tmp_path):
    location = resolve_storage_url("journal:///s.journal", base_dir=tmp_path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=open_storage(location), study_name="s")
    now = time.time()
    me = worker_identity(heartbeat_interval=1)
    dead_here = {**me, "pid": 2**22 + 17, "token": "gone"}  # no such process on this host
    remote = {"host": "another-host", "pid": 1, "token": "x", "heartbeat": 1}
    remote_silent = {"host": "another-host", "pid": 1, "token": "x", "heartbeat": None}
    live = _running_trial(study, me)
    dead = _running_trial(study, dead_here)
    fresh = _running_trial(study, remote, beat=now)
    stale = _running_trial(study, remote, beat=now - 10)
    unknown = _running_trial(study, remote_silent)
    orphan = _running_trial(study, None)  # killed before it recorded its worker

    in_an_hour = now + 3600  # any heartbeat or start is old by then
    found = {s.number for s in find_stale_trials(study, BEAT, now=now)}
    assert found == {dead.number, stale.number}
    found_later = {s.number for s in find_stale_trials(study, BEAT, now=in_an_hour)}
    assert found_later == {dead.number, stale.number, fresh.number, orphan.number}
    assert live.number not in found_later and unknown.number not in found_later

    failed = sweep_stale_trials(study, BEAT, now=now)
    assert {s.number for s in failed} == {dead.number, stale.number}
    assert sweep_stale_trials(study, BEAT, now=now) == []  # nothing twice
    trials = study.get_trials(deepcopy=False)
    waiting = [t for t in trials if t.state.name == "WAITING"]
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted([dead.number, stale.number])
    for t in waiting:
        assert t.system_attrs["fixed_params"] == trials[t.user_attrs["retry_of"]].params
    # a retry that dies as well is failed but not retried again
    retry = study.ask()
    assert retry.user_attrs.get("retry_of") is not None
    study._storage.set_trial_system_attr(retry._trial_id, WORKER_ATTR, dead_here)
    assert [s.number for s in sweep_stale_trials(study, BEAT, now=now)] == [retry.number]
    assert len([t for t in study.get_trials(deepcopy=False) if t.state.name == "WAITING"]) == 1


@pytest.mark.slow
def test_a_worker_killed_inside_a_run_is_retried_by_the_others_in_the_same_run(
    surrogate_study, monkeypatch, capsys
):
    """Two worker processes; one is killed mid-trial. The survivor's sweep (every heartbeat
    interval) fails the trial, retries it and takes its ticket back: the same run ends with the
    study full, and reports the dead worker (exit 1)."""
    url = URLS["journal"]
    path = surrogate_study({"study.n_trials": "8"})
    env = _heartbeat_env(monkeypatch)
    log = path.parent / "search.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                *SLOW_SEARCH,
                str(DELAY_S),
                "search",
                str(path),
                "--quiet",
                "--workers",
                "2",
                "--storage",
                url,
            ],
            cwd=path.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def victim():
            study = _load(path, url)
            if study is None:
                return None
            trials = study.get_trials(deepcopy=False)
            finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
            running = [
                t
                for t in trials
                if t.state.name == "RUNNING"
                and t.user_attrs.get("feasible") is True
                and time.time() - t.datetime_start.timestamp() < DELAY_S / 2
            ]
            return len(finished) >= 2 and running

        trial = _wait(victim, 180, "2 finished trials and one running", poll=0.05)[0]
        os.kill(trial.system_attrs[WORKER_ATTR]["pid"], signal.SIGKILL)
        assert process.wait(timeout=180) == 1, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    trials = {t.number: t for t in _load(path, url).get_trials(deepcopy=False)}
    dead = trials[trial.number]
    assert dead.state.name == "FAIL" and dead.user_attrs["fail_reason"] == "worker_lost"
    retries = [t for t in trials.values() if t.user_attrs.get("retry_of") == dead.number]
    assert len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED")
    states = [t.state.name for t in trials.values()]
    assert states.count("COMPLETE") + states.count("PRUNED") == 8, states
    assert "1 worker(s) exited with codes -9" in log.read_text()
    with capsys.disabled():
        print(
            f"\nFIGURE worker killed inside a 2-worker run (journal): trial #{dead.number} "
            f"FAIL ({dead.user_attrs['error']}), retried in the same run as "
            f"#{retries[0].number}; the run ended with 8/8 finished, trials lost = 0"
        )
