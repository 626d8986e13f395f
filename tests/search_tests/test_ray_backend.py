"""The Ray Tune backend on the analytic surrogate: the same records as the Optuna backend, trials
on every node of a cluster, an interrupted (Ctrl-C) or killed driver resumed without losing or
repeating trials, failing trials retried and then recorded FAIL and replaced.

Ray runs lean here (2 CPUs, no dashboard, a small object store) with token authentication off
(everything is on 127.0.0.1). Ray nodes started by a test are stopped by process id, never with
``ray stop``, which would stop every Ray process on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from effscale.search.cli import main
from effscale.search.runners import optuna_runner, ray_driver
from effscale.search.storage import open_storage, resolve_storage_url
from effscale.search.study_file import StudyFileError, load_study_file
from tests.search_tests import ray_faults
from tests.search_tests.conftest import STUDIES, as_training, edit_study

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
REPO = Path(__file__).resolve().parents[2]
OBJECT_STORE = 200 * 1024**2


def load(path: Path, storage: str | None = None) -> list:
    d = load_study_file(path)
    location = resolve_storage_url(storage or d.storage_url, base_dir=d.folder)
    study = optuna.load_study(study_name=d.study.name, storage=open_storage(location))
    return study.get_trials()


def finished(trials: list) -> list:
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs in this process; yields its address for other drivers."""
    import ray

    with pytest.MonkeyPatch.context() as patch:
        for name, value in RAY_ENV.items():
            patch.setenv(name, value)
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE,
            log_to_driver=False,
            logging_level="WARNING",
        )
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


def test_records_match_the_optuna_backend_and_status_reads_them(ray_local, surrogate_study, capsys):
    import ray

    # the space wider than the shipped one, so that some points miss the constraint (PRUNED)
    path = surrogate_study(
        {
            "study.n_trials": "8",
            "space.alpha": "{low = 1.0, high = 1.6}",
            "space.beta": "{low = 1.0, high = 1.4}",
        }
    )
    d = load_study_file(path)
    summary = ray_driver.run_study(d, quiet=True)
    assert (summary.started, summary.n_complete + summary.n_pruned, summary.n_failed) == (8, 8, 0)
    optuna_runner.run_study(d, storage="journal:///optuna.journal", quiet=True)

    on_ray, on_optuna = load(path), load(path, "journal:///optuna.journal")
    assert [t.number for t in on_ray] == list(range(8))
    head = ray.get_runtime_context().get_node_id()
    assert {t.user_attrs[ray_driver.NODE_ATTR] for t in on_ray} == {head}
    for ray_trial, optuna_trial in zip(on_ray, on_optuna):
        # the seeded sampler draws the same points in the same order: the same trials
        assert ray_trial.state == optuna_trial.state
        assert ray_trial.params == optuna_trial.params
        assert ray_trial.values == optuna_trial.values
        assert ray_trial.constraints == optuna_trial.constraints
        attrs = dict(ray_trial.user_attrs)
        del attrs[ray_driver.NODE_ATTR]
        assert attrs == optuna_trial.user_attrs
    assert {t.state.name for t in on_ray} == {"COMPLETE", "PRUNED"}  # infeasible points too
    for t in on_ray:  # infeasible points are recorded by the driver, never handed to Ray
        ran_on_ray = ray_driver.ATTEMPTS_ATTR in t.system_attrs
        assert ran_on_ray == (t.state.name == "COMPLETE")

    capsys.readouterr()
    assert main(["status", str(path), "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["n_complete"] + document["n_pruned"] == 8 and document["n_running"] == 0
    assert document["best"]["number"] == summary.best_number
    assert all(t["user_attrs"][ray_driver.NODE_ATTR] == head for t in document["trials"])
    assert not list((path.parent / "study.ray").glob("*.json"))  # a finished run leaves no pointer


def test_a_failing_trial_is_retried_then_failed_and_replaced(
    ray_local, surrogate_study, monkeypatch
):
    # the 2nd trial handed to Ray always raises; the 3rd raises once, then succeeds on its retry
    path = surrogate_study(
        {
            "study.sampler": '"grid"',
            "study.n_trials": "6",
            "space.alpha": "{low = 1.0, high = 1.5, step = 0.1}",
            "space.beta": "[1.0, 1.1]",
        }
    )
    faulty = ray_faults.failing(always=frozenset({1}), once=frozenset({2}))
    summary = ray_driver.run_study(
        load_study_file(path), quiet=True, max_failures=1, objective=faulty
    )
    trials = load(path)
    # two trials run at once: a grid point that another running trial holds may be drawn again,
    # and that trial is PRUNED as a duplicate (``duplicate_of``) without training, then replaced
    duplicates = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert all(t.state.name == "PRUNED" for t in duplicates)
    assert summary.n_failed == 1
    assert summary.n_complete + summary.n_pruned - len(duplicates) == 6
    # (once in CI, before the free-slot rule of remaining_trials: 8 trials, 6 finished)
    states = [(t.number, t.state.name, t.params) for t in trials]
    assert len(finished(trials)) - len(duplicates) == 6, states
    assert len(trials) == 7 + len(duplicates), states
    trials = [t for t in trials if "duplicate_of" not in t.user_attrs]
    failed, retried = trials[1], trials[2]
    assert failed.state.name == "FAIL" and failed.system_attrs[ray_driver.ATTEMPTS_ATTR] == 2
    assert failed.user_attrs["error"] == f"RuntimeError: {ray_faults.MESSAGE}"
    assert failed.user_attrs.get("fail_reason", "error") == "error"
    assert failed.user_attrs["cost_ratio"] and failed.values is None  # its point is recorded
    assert retried.state.name == "COMPLETE" and retried.system_attrs[ray_driver.ATTEMPTS_ATTR] == 2
    # a successful retry looks like any other trial
    assert "error" not in retried.user_attrs and "fail_reason" not in retried.user_attrs
    assert all(t.system_attrs[ray_driver.ATTEMPTS_ATTR] == 1 for t in trials[3:])
    # no point is finished twice, and nothing is left queued or running
    points = [tuple(sorted(t.params.items())) for t in finished(trials)]
    assert len(set(points)) == 6
    assert not [t.number for t in trials if t.state.name in ("WAITING", "RUNNING")], states
    # the failed grid point is run again by a new trial when a slot is free at its failure (the
    # usual order). Once in CI the other slot's fast trials had reached the target by then: the
    # point then is not queued, rather than left WAITING for ever as it was before
    reruns = [t for t in trials if t.params == failed.params and t.number != failed.number]
    assert [t.state.name for t in reruns] in ([], ["COMPLETE"]), states
    assert bool(reruns) == (tuple(sorted(failed.params.items())) in points)


def test_options_are_checked_before_the_storage_is_touched(ray_local, surrogate_study, capsys):
    path = surrogate_study({"study.n_trials": "4"})
    assert main(["search", str(path), "--address", "auto"]) == 2
    assert "--address: only for the Ray backend" in capsys.readouterr().err
    assert main(["search", str(path), "--backend", "ray", "--gpus", "0", "--address", "auto"]) == 2
    assert "--gpus: device indices" in capsys.readouterr().err
    assert main(["search", str(path), "--backend", "ray", "--gpus-per-trial", "0.5"]) == 2
    assert "the Ray cluster has 0" in capsys.readouterr().err
    assert not (path.parent / "study.db").exists()


def test_execution_section_reads_the_ray_keys(surrogate_study):
    path = surrogate_study(
        append='\n[execution]\nbackend = "ray"\naddress = "auto"\n'
        "gpus_per_trial = 0.25\ncpus_per_trial = 2\nmax_concurrent = 3\n"
        'max_failures = 0\nstorage_path = "runs"\n'
    )
    d = load_study_file(path)
    ex = d.execution
    assert (
        ex.backend,
        ex.address,
        ex.gpus_per_trial,
        ex.cpus_per_trial,
        ex.max_concurrent,
        ex.max_failures,
        ex.storage_path,
    ) == ("ray", "auto", 0.25, 2.0, 3, 0, path.parent / "runs")
    options = ray_driver.resolve_options(d, max_concurrent=5)
    assert (options.resources, options.max_concurrent, options.storage_path) == (
        {"cpu": 2.0, "gpu": 0.25},
        5,
        path.parent / "runs",
    )
    plain = load_study_file(surrogate_study(name="plain.toml"))
    local = ray_driver.resolve_options(plain, gpus=(0, 1), trials_per_gpu=4)
    assert (local.gpus_per_trial, local.local_gpus, local.storage_path) == (
        0.25,
        (0, 1),
        path.parent / "plain.ray",
    )
    with pytest.raises(StudyFileError, match="execution.gpus_per_trial"):
        load_study_file(
            surrogate_study(name="bad.toml", append="\n[execution]\ngpus_per_trial = 1.5\n")
        )


def test_pruners_become_schedulers_that_never_pause(surrogate_study):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    def scheduler(pruner: str):
        text = as_training(
            edit_study((STUDIES / "surrogate_compound.toml").read_text(), {}), train="epochs = 6"
        )
        path = surrogate_study(name="train.toml")
        path.write_text(text + f"\n[pruner]\n{pruner}\n")
        return ray_driver.make_scheduler(load_study_file(path))

    assert isinstance(ray_driver.make_scheduler(load_study_file(surrogate_study())), FIFOScheduler)
    median = scheduler('kind = "median"\nn_startup_trials = 2\nn_warmup_steps = 1')
    assert isinstance(median, MedianStoppingRule)
    assert (median._grace_period, median._min_samples_required, median._hard_stop) == (2, 2, True)
    halving = scheduler('kind = "successive_halving"\nmin_resource = 1\nreduction_factor = 2')
    assert isinstance(halving, ASHAScheduler)
    assert (halving._max_t, len(halving._brackets)) == (7, 1)  # past the last epoch
    hyperband = scheduler('kind = "hyperband"\nmin_resource = 1\nreduction_factor = 2')
    assert isinstance(hyperband, ASHAScheduler) and len(hyperband._brackets) == 3


def test_the_driver_settles_trials_that_tune_stopped_or_failed():
    study = optuna.create_study(direction="maximize")
    stopped = study.ask()
    for epoch, ap in ((1, 0.1), (2, 0.2)):
        stopped.report(ap, epoch)
    ray_driver._settle(study, stopped._trial_id, result={"ap": 0.2, "epoch": 2}, error=False)
    crashed, lost = study.ask(), study.ask()
    study._storage.set_trial_system_attr(
        crashed._trial_id,
        ray_driver.FAILURE_ATTR,
        {"error": "ValueError: bad", "fail_reason": "error"},
    )
    ray_driver._settle(study, crashed._trial_id, result=None, error=True)
    ray_driver._settle(study, lost._trial_id, result=None, error=True)
    done = study.get_trials()
    assert done[0].state.name == "PRUNED" and done[0].values == [0.2]  # as Optuna's pruners
    assert (done[0].user_attrs["pruned_at_epoch"], done[0].user_attrs["prune_reason"]) == (
        2,
        "pruner",
    )
    assert done[1].state.name == "FAIL"
    assert done[1].user_attrs == {"error": "ValueError: bad", "fail_reason": "error"}
    assert done[2].state.name == "FAIL" and done[2].user_attrs["fail_reason"] == "worker_lost"
    ray_driver._settle(study, stopped._trial_id, result=None, error=True)  # finished: untouched
    assert study.get_trials()[0].state.name == "PRUNED"


def _search_command(path: Path, address: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "effscale.search.cli",
        "search",
        str(path),
        "--backend",
        "ray",
        "--address",
        address,
        "--quiet",
        *extra,
    ]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **RAY_ENV, **extra}


def _poll(check, *, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{process.args[:4]} exited ({process.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _start_driver(
    path: Path, address: str, log: Path, seconds: float, after: int
) -> subprocess.Popen:
    """A Ray driver whose trials sleep ``seconds`` once ``after`` trials are COMPLETE."""
    command = [
        sys.executable,
        "-m",
        "tests.search_tests.ray_faults",
        str(path),
        address,
        str(seconds),
        str(after),
    ]
    with log.open("w") as out:
        return subprocess.Popen(
            command,
            env=_env(PYTHONPATH=str(REPO)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_sleeping(path: Path, driver: subprocess.Popen, *, complete: int, after: int) -> None:
    """Until the study holds ``complete`` COMPLETE trials and two trials numbered above
    ``after`` sleep in their Ray workers (RUNNING, with an attempt recorded)."""

    def caught() -> bool:
        # the driver writes its experiment pointer once the study is made: only then may this
        # process open the SQLite file (two processes creating its tables would race)
        if not list((path.parent / "study.ray").glob("*.json")):
            return False
        trials = load(path)
        sleeping = [
            t
            for t in trials
            if t.state.name == "RUNNING"
            and t.number > after
            and ray_driver.ATTEMPTS_ATTR in t.system_attrs
        ]
        done = [t for t in trials if t.state.name == "COMPLETE"]
        return len(done) >= complete and len(sleeping) == 2

    _poll(caught, timeout=120, what="two sleeping trials", process=driver)


def test_an_interrupted_or_killed_driver_is_resumed_without_losing_or_repeating_trials(
    ray_local, surrogate_study
):
    path = surrogate_study({"study.n_trials": "8"})
    # Ctrl-C: trials from the 3rd on sleep, so that two are caught running
    driver = _start_driver(path, ray_local, path.parent / "first.log", 60, after=2)
    try:
        _wait_sleeping(path, driver, complete=2, after=-1)
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=90) == 130
    finally:
        driver.kill()
    log = (path.parent / "first.log").read_text()
    assert "2 running trial(s) recorded FAIL" in log and "Tuner.restore" not in log
    trials = load(path)
    assert not [t for t in trials if t.state.name == "RUNNING"]  # consistent on the way out
    interrupted = {t.number for t in trials if t.state.name == "FAIL"}
    assert len(interrupted) == 2
    experiment = trials[0].system_attrs[ray_driver.EXPERIMENT_ATTR]

    # kill -9 of the next driver while two of its trials sleep: no clean-up of any kind
    driver = _start_driver(path, ray_local, path.parent / "second.log", 60, after=0)
    try:
        _wait_sleeping(path, driver, complete=2, after=max(t.number for t in trials))
    finally:
        driver.kill()
        driver.wait()
    killed = {t.number for t in load(path) if t.state.name == "RUNNING"}
    assert len(killed) == 2

    rerun = subprocess.run(
        _search_command(path, ray_local), env=_env(), capture_output=True, text=True, timeout=150
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    trials = load(path)
    done = finished(trials)
    assert len(done) == 8 and len({t.number for t in done}) == 8
    failed = {t.number for t in trials if t.state.name == "FAIL"}
    assert failed == interrupted | killed
    assert all(
        t.user_attrs["error"].startswith("interrupted") for t in trials if t.number in failed
    )
    assert not any(t.state.name == "RUNNING" for t in trials)
    # nothing ran twice: each trial's objective ran in one attempt, and both reruns restored
    # the same Tune experiment rather than starting the stopped trials again
    assert all(t.system_attrs.get(ray_driver.ATTEMPTS_ATTR, 1) == 1 for t in trials)
    assert {t.system_attrs[ray_driver.EXPERIMENT_ATTR] for t in trials} == {experiment}


# ------------------------------------------------------------------------- a two-node cluster


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _session_processes(sid: int) -> list[int]:
    """Processes of session ``sid`` (a ``ray start`` started in a new session and its children)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[3]) == sid:
            pids.append(int(entry))
    return pids


class _Node:
    """``ray start --block`` in its own session; :meth:`stop` ends exactly its processes."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                ["ray", "start", "--block", *args],
                env=_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_started(self, timeout: float = 90) -> None:
        _poll(
            lambda: "Ray runtime started" in self.log.read_text(),
            timeout=timeout,
            what=f"ray start ({self.log.name})",
            process=self.process,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # its Ray processes share its fate
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        deadline = time.monotonic() + 10
        while (left := _session_processes(self.process.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _node_args(temp: Path, ports: list[int]) -> list[str]:
    manager, objects, agent, agent_grpc, runtime_env, metrics, low = ports
    return [
        "--num-cpus=1",
        f"--temp-dir={temp}",
        "--node-ip-address=127.0.0.1",
        f"--object-store-memory={OBJECT_STORE // 2}",
        "--disable-usage-stats",
        f"--node-manager-port={manager}",
        f"--object-manager-port={objects}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--min-worker-port={low}",
        f"--max-worker-port={low + 99}",
    ]


@pytest.mark.slow
def test_trials_run_on_both_nodes_of_a_two_node_cluster(surrogate_study, tmp_path):
    path = surrogate_study({"study.n_trials": "8"})
    ports = _free_ports(16)
    gcs = ports[0]
    # worker port ranges well apart from each other and from the fixed ports
    head_ports = ports[2:8] + [20000 + gcs % 10000]
    worker_ports = ports[8:14] + [20000 + gcs % 10000 + 200]
    # short temp dirs: Ray's unix socket paths must stay under 107 characters
    temps = [Path(f"/tmp/effscale-ray-{os.getpid()}-{i}") for i in (0, 1)]
    nodes: list[_Node] = []
    try:
        nodes.append(
            _Node(
                [
                    "--head",
                    f"--port={gcs}",
                    "--include-dashboard=false",
                    *_node_args(temps[0], head_ports),
                ],
                tmp_path / "head.log",
            )
        )
        nodes[0].wait_started()
        nodes.append(
            _Node(
                [f"--address=127.0.0.1:{gcs}", *_node_args(temps[1], worker_ports)],
                tmp_path / "worker.log",
            )
        )
        nodes[1].wait_started()
        # each trial sleeps 2 s, so that two run at once and one CPU per node spreads them
        # (instant trials could all be taken by the first node's warm worker)
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.search_tests.ray_faults",
                str(path),
                f"127.0.0.1:{gcs}",
                "2",
                "0",
            ],
            env=_env(PYTHONPATH=str(REPO)),
            capture_output=True,
            text=True,
            timeout=150,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "8 started now" in run.stdout
    finally:
        for node in reversed(nodes):
            node.stop()
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)
    trials = load(path)
    assert len(finished(trials)) == 8
    on_ray = [t for t in trials if ray_driver.ATTEMPTS_ATTR in t.system_attrs]
    assert len({t.user_attrs[ray_driver.NODE_ATTR] for t in on_ray}) == 2, [
        t.user_attrs[ray_driver.NODE_ATTR] for t in on_ray
    ]
