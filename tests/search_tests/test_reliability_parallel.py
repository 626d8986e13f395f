"""Issue #8, point 2: 8 worker processes × 25 surrogate trials on the default storage (SQLite),
on a journal file and on PostgreSQL: 200 trials recorded, no duplicates, no lock errors.

PostgreSQL needs a server: ``EFFSCALE_TEST_POSTGRES_URL`` (``.ci/run`` installs Debian's
``postgresql``, starts it and exports the URL; psycopg2-binary is in the test extra), else the
test is skipped.

    python -m pytest tests/search_tests/test_reliability_parallel.py -s   # prints the figures
"""

from __future__ import annotations

import os
import time
import uuid

import optuna
import pytest

from effscale.search.runners.optuna_runner import run_study
from effscale.search.storage import open_storage, resolve_storage_url
from effscale.search.study_file import load_study_file

WORKERS, PER_WORKER = 8, 25
POSTGRES_URL = os.environ.get("EFFSCALE_TEST_POSTGRES_URL")


def _storages():
    yield pytest.param("sqlite", None, id="sqlite-default")
    yield pytest.param("journal", "journal:///study.journal", id="journal")
    yield pytest.param(
        "postgresql",
        POSTGRES_URL,
        id="postgresql",
        marks=pytest.mark.skipif(
            not POSTGRES_URL,
            reason="EFFSCALE_TEST_POSTGRES_URL is not set: no PostgreSQL server "
            "to test against (.ci/run starts one; locally: apt-get install -y postgresql, start it, "
            "create a user and a database, export the URL)",
        ),
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind, url", list(_storages()))
def test_eight_workers_record_every_trial_once(surrogate_study, capsys, kind, url):
    total = WORKERS * PER_WORKER
    name = f"parallel-{uuid.uuid4().hex[:8]}"  # a server keeps its studies between runs
    path = surrogate_study({"study.n_trials": str(total), "study.name": f'"{name}"'})
    d = load_study_file(path)
    start = time.perf_counter()
    summary = run_study(d, workers=WORKERS, storage=url, quiet=True)
    wall = time.perf_counter() - start
    location = resolve_storage_url(url or d.storage_url, base_dir=d.folder)
    if kind == "sqlite":
        assert location.kind == "sqlite" and location.path == d.folder / "study.db"
    storage = open_storage(location)
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        assert summary.failed_workers == () and summary.started == total
        numbers = [t.number for t in trials]
        states = [t.state.name for t in trials]
        errors = [t.user_attrs["error"] for t in trials if "error" in t.user_attrs]
        duplicates = len(numbers) - len(set(numbers))
        repeated_params = len(trials) - len({tuple(sorted(t.params.items())) for t in trials})
        workers = {(t.system_attrs["effscale:worker"]["pid"]) for t in trials}
        starts = [t.datetime_start for t in trials]
        ends = [t.datetime_complete for t in trials]
        trial_phase = (max(ends) - min(starts)).total_seconds()
        with capsys.disabled():
            print(
                f"\nFIGURE parallel {kind}: {WORKERS} workers x {PER_WORKER} trials: "
                f"{len(trials)}/{total} recorded, {duplicates} duplicates, {repeated_params} "
                f"repeated params, {len(errors)} errors, {states.count('FAIL')} failed, "
                f"{states.count('RUNNING')} left running, {len(workers)} worker processes; "
                f"wall {wall:.1f} s (process start-up included), first trial start to last "
                f"trial end {trial_phase:.1f} s"
            )
        assert len(trials) == total and sorted(numbers) == list(range(total))
        assert duplicates == 0 and repeated_params == 0 and errors == []
        assert set(states) <= {"COMPLETE", "PRUNED"}
    finally:
        if kind == "postgresql":
            optuna.delete_study(study_name=name, storage=storage)
